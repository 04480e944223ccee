"""Installation helpers: `netblock install-units`."""

from __future__ import annotations

from netblock.system import units


def register(sub) -> None:
    p = sub.add_parser("install-units", help="install the systemd service and timers",
                       description="Write netblock's systemd units (the daemon service, and the run-once, "
                       "expire, report and export timers) into PREFIX/etc/systemd/system, with ExecStart "
                       "pointing at this installation's netblock command. Enable either netblock.service "
                       "or netblock-run.timer afterwards, not both.")
    p.add_argument("--prefix", default="/", help="root to install under (default: /)")
    p.add_argument("--json", action="store_true", help="print the paths written as JSON (default: text)")
    p.set_defaults(handler=cmd_install_units)
    register_demo(sub)

    p = sub.add_parser("completion", help="print the shell completion script",
                       description="Print a bash completion script for netblock, generated from its own "
                       "options: `netblock completion bash > /etc/bash_completion.d/netblock`.")
    p.add_argument("shell", choices=("bash",), help="the shell (bash)")
    p.set_defaults(handler=cmd_completion)


def cmd_install_units(args, ctx) -> int:
    written = units.install(args.prefix)
    if args.json:
        ctx.print_json([str(p) for p in written])
        return 0
    for path in written:
        ctx.print(f"wrote {path}")
    ctx.print("next: systemctl daemon-reload && systemctl enable --now netblock.service "
              "(or netblock-run.timer for the daemon-less mode)")
    return 0


def register_demo(sub) -> None:
    p = sub.add_parser("demo", help="watch netblock stop a spam storm, in throwaway namespaces (root)",
                       description="Build a throwaway pair of network namespaces, write a synthetic Postfix log "
                       "of a spam storm, run ingest -> policy -> aggregation -> kernel inside the server "
                       "namespace with a temporary store, let the zombies knock again with real SYNs, and "
                       "print the wrap-up. Never touches the host's ruleset; cleans up on exit or Ctrl-C.")
    p.add_argument("--backend", dest="demo_backend", choices=("nftables", "ipset", "iptables"), default="nftables",
                   help="kernel backend to demonstrate (default: nftables)")
    p.add_argument("--keep", action="store_true", help="leave the namespaces for poking around (prints how to "
                   "remove them; default: clean up)")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args, ctx) -> int:
    from netblock.demo import storm as demo

    return demo.run(backend=args.demo_backend, keep=args.keep, out=ctx.stdout)


def cmd_completion(args, ctx) -> int:
    from netblock.cli import build_parser
    from netblock.system.completion import bash

    ctx.stdout.write(bash(build_parser()))
    return 0
