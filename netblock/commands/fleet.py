"""`netblock fleet`: the roles of a fleet's shared PostgreSQL (run with the database owner's DSN)."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta

from netblock.errors import BadInput

DEFAULT_ADMIN_ROLE = "netblock_admin"


def register(sub) -> None:
    p = sub.add_parser("fleet", help="create the fleet's PostgreSQL roles (admin, one per host)",
                       description="Roles of the fleet's shared PostgreSQL, created with the database owner's "
                       "DSN (--db or $NETBLOCK_DB): `init-admin` once, `add-host NAME` per MX. Each prints the "
                       "new role's password as a libpq password file line; give each host only its own.")
    fsub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    a = fsub.add_parser("init-admin", help="create the admin role (the root CLI's) and set the host roles' limits",
                        description="Create or re-key the admin role, used by the root CLI (add, del, allow) "
                        "from whatever host the admin works on, and copy the policy's limits from this "
                        "configuration into the database: the widest prefix and the longest TTL a host "
                        "role's policy blocks may have. Run again after changing the policy.")
    a.add_argument("--role", default=DEFAULT_ADMIN_ROLE, help=f"role name (default: {DEFAULT_ADMIN_ROLE})")
    _common(a)
    a.set_defaults(handler=cmd_init_admin)
    h = fsub.add_parser("add-host", help="create (or re-key) one MX host's role",
                        description="Create or re-key the role of the MX host NAME (its host_id). The role "
                        "writes only NAME's observations, samples, positions and addresses, and blocks "
                        "only as the policy does, within the limits `init-admin` set.")
    h.add_argument("name", metavar="NAME", help="the host's host_id")
    h.add_argument("--role", help="role name (default: netblock_NAME, other characters as _)")
    _common(h)
    h.set_defaults(handler=cmd_add_host)
    s = fsub.add_parser("show", help="roles, limits and quarantined rows",
                        description="The fleet's roles, the host roles' limits, and how many rows the "
                        "schema upgrade moved to the quarantine table.")
    s.add_argument("--json", action="store_true", help="print JSON (default: text)")
    s.set_defaults(handler=cmd_show)


def _common(p) -> None:
    p.add_argument("--passfile", metavar="PATH",
                   help="append the role's password file line (host:port:db:role:password) to PATH "
                   "(created mode 0600; default: print it)")
    p.add_argument("--json", action="store_true", help="print JSON (default: text)")


def _pg(ctx):
    from netblock.store.postgres import PgStore

    store = ctx.store()
    if not isinstance(store, PgStore):
        raise BadInput("netblock fleet: needs a postgresql:// store (--db or $NETBLOCK_DB: the owner's DSN)")
    return store


def policy_limits(config) -> tuple[int, int, int, bool]:
    """(widest IPv4 prefix, widest IPv6 prefix, longest TTL in seconds, any permanent class) of the policy."""
    from netblock.decide.policy import class_rules

    v4, v6 = 32, 128
    if config.widen.enabled:
        v4, v6 = min(v4, config.widen.max_prefix_v4), min(v6, config.widen.max_prefix_v6)
    if config.routed.enabled:
        v4, v6 = min(v4, config.routed.max_prefix_v4), min(v6, config.routed.max_prefix_v6)
    ttls = [r.ttl for r in class_rules(config).values()]
    longest = max([t for t in ttls if t is not None], default=timedelta(days=1))
    return max(v4, 4), max(v6, 16), int(longest.total_seconds()), any(t is None for t in ttls)


def _hand_out(ctx, args, store, role: str, host: str | None) -> int:
    from netblock.store.postgres import create_fleet_role

    password = secrets.token_urlsafe(24)
    create_fleet_role(store, role, host, password)
    info = store._conn.info
    line = f"*:*:{info.dbname}:{role}:{password}"
    dsn = (f"postgresql://{role}@{info.host if not info.host.startswith('/') else 'DBHOST'}:{info.port}/"
           f"{info.dbname}?sslmode=verify-full&passfile=/etc/netblock/pgpass")
    if args.passfile:
        fd = os.open(args.passfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(line + "\n")
    out = {"role": role, "host": host, "dsn": dsn, "passfile": args.passfile,
           "passfile_line": None if args.passfile else line}
    if args.json:
        ctx.print_json(out)
        return 0
    what = "admin role" if host is None else f"role of host {host}"
    ctx.print(f"{what}: {role}")
    ctx.print(f"dsn:       {dsn}")
    if args.passfile:
        ctx.print(f"password:  appended to {args.passfile}")
    else:
        ctx.print(f"passfile:  {line}")
    return 0


def cmd_init_admin(args, ctx) -> int:
    from netblock.store.postgres import set_fleet_limits

    store = _pg(ctx)
    set_fleet_limits(store, *policy_limits(ctx.config))
    return _hand_out(ctx, args, store, args.role, None)


def cmd_add_host(args, ctx) -> int:
    from netblock.store.postgres import role_for
    from netblock.store.receipt import printable

    name = args.name
    if not name or printable(name) != name or len(name) > 253:
        raise BadInput(f"fleet add-host: {printable(name)!r} is not a host id")
    store = _pg(ctx)
    return _hand_out(ctx, args, store, args.role or role_for(name), name)


def cmd_show(args, ctx) -> int:
    from netblock.store.postgres import fleet_overview

    info = fleet_overview(_pg(ctx))
    if args.json:
        ctx.print_json(info)
        return 0
    for r in info["roles"]:
        ctx.print(f"{r['role']:<24}{'admin' if r['host'] is None else 'host ' + r['host']}")
    lim = info["limits"]
    ctx.print(f"host roles' policy blocks: IPv4 /{lim['max_prefix_v4']} or narrower, IPv6 /{lim['max_prefix_v6']} "
              f"or narrower, expiring within {lim['max_ttl_s']} s{', or permanent' if lim['permanent'] else ''}")
    if info["quarantined"] is not None:
        ctx.print(f"quarantined rows: {info['quarantined']}")
    return 0
