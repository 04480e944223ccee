"""The root CLI's block commands: add, del, list, allow, expire, sync, status,
remove-rules, config, aggregate.

Each mutating command validates all of its input before it writes anything,
writes the store in one transaction, and ends with sync(), so the kernel
always equals the store: a refused input changes neither.

The rules they apply live below: what `add` stores and refuses in
decide/manual.py, what `expire` records and purges in decide/expiry.py, the
IPv4 cap tried before a write in run/cap.py, the kernel side in run/sync.py
and run/delta.py.

Why this module is long: the parsers and printers of the ten commands above
live together.
"""

from __future__ import annotations

import dataclasses
import gc
import re
from datetime import datetime, timedelta, timezone
from socket import inet_aton
from typing import Any, Iterable

from netaddr import IPNetwork

from netblock import durations
from netblock.decide import expiry, manual
from netblock.errors import BadInput, NetblockError
from netblock.model import AllowEntry, Block, host_mask
from netblock.printable import printable
from netblock.run.cap import check_cap
from netblock.system.lock import kernel_lock

MAX_WARNINGS = 5  # host-bit warnings shown one by one before they are only counted
SCREEN_AT = 1000  # targets from which `add` screens them in arrays first (_Screen)

# An IPv4 address exactly as parse_target() accepts it (four decimal fields, 0-255, no leading zero),
# and the prefix lengths it accepts at any setting without a warning (/8 to /32, plain decimal).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PLAIN_V4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_PLAIN_V4_PREFIXLEN = {str(n): n for n in range(8, 33)}


# ---------------------------------------------------------------- formatting

def iso(when: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, to the second (the store keeps seconds); None stays None."""
    if when is None:
        return None
    return when.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]


# ---------------------------------------------------------------- input

def read_target_lines(stream) -> list[tuple[str, str]]:
    """(text, where) of each target in a list file: first field of each line.

    '#' and ';' start comments (FireHOL and Spamhaus headers); whatever follows
    the first whitespace-separated field is ignored, so `198.18.1.0/24 ; SBL1`
    loads as is.
    """
    out = []
    for n, line in enumerate(stream, 1):
        field = line.split(None, 1)[0] if line.strip() else ""
        if not field or field[0] in "#;":
            continue
        out.append((field, f"stdin line {n}"))
    return out


def parse_targets(items: list[tuple[str, str]], ctx, *, force: bool = False, any_width: bool = False,
                  progress=None) -> list[IPNetwork]:
    """Parse every target or raise BadInput on the first bad one; warnings go to stderr.

    ``any_width`` for commands that only name space (del, allow): no width limit applies.

    A canonical IPv4 address or CIDR of /8 to /32 (what a list of 100k holds)
    is one that parse_target() takes as it is, with no warning, whatever
    ``force`` and ``any_width`` say: it is read by one regular expression
    here; anything else goes through parse_target().
    """
    return _parse(items, ctx, force=force, any_width=any_width, progress=progress)[0]


def _parse(items: list[tuple[str, str]], ctx, *, force: bool = False, any_width: bool = False,
           progress=None) -> tuple[list[IPNetwork], list[int]]:
    """parse_targets(), and beside each netblock its key ``value << 8 | prefixlen`` when it was read as
    canonical IPv4 text (-1 otherwise)."""
    from netblock.aggregate import v4_network
    from netblock.decide.targets import parse_target

    nets = []
    keys = []
    warned = 0
    plain, prefixlens = _PLAIN_V4.fullmatch, _PLAIN_V4_PREFIXLEN
    for text, where in items:
        addr, slash, plen_text = text.partition("/")
        plen = prefixlens.get(plen_text) if slash else 32
        if plen is not None and plain(addr) is not None:
            value = int.from_bytes(inet_aton(addr), "big")
            if not value & ((1 << (32 - plen)) - 1):
                nets.append(v4_network(value, plen))
                keys.append(value << 8 | plen)
                if progress is not None:
                    progress.advance()
                continue
        keys.append(-1)
        try:
            target = parse_target(text, force=force, any_width=any_width)
        except BadInput as exc:
            raise type(exc)(f"{where}: {exc}" if where.startswith("stdin") else str(exc)) from None
        if target.warning:
            warned += 1
            if warned <= MAX_WARNINGS:
                ctx.warn(f"{where}: {target.warning}" if where.startswith("stdin") else target.warning)
        nets.append(target.netblock)
        if progress is not None:
            progress.advance()
    if warned > MAX_WARNINGS:
        ctx.warn(f"{warned - MAX_WARNINGS} more targets had host bits set and were normalised")
    return nets, keys


def parse_ttl(text: str, config) -> timedelta:
    from netblock.decide.targets import parse_duration

    try:
        ttl = parse_duration(text)
    except BadInput as exc:
        raise BadInput(f"--ttl: {exc}") from None
    max_ttl = config.blocks.max_ttl
    if max_ttl and ttl > max_ttl:
        raise BadInput(f"--ttl {text!r}: longer than blocks.max_ttl ({durations.format(max_ttl, weeks=True)}); "
                       "use --permanent for a block that never expires")
    return ttl


def check_width(net: IPNetwork, config, force: bool, text: str) -> None:
    """The config's widest-prefix limits, on top of the parser's fixed /8 and /32."""
    if force:
        return
    limit = config.blocks.max_prefix_v4 if net.version == 4 else config.blocks.max_prefix_v6
    if net.prefixlen < limit:
        raise BadInput(f"{text}: wider than /{limit} (blocks.max_prefix_v{net.version}); use --force")


# ---------------------------------------------------------------- sync glue

def run_sync(ctx, *, dry_run: bool = False):
    from netblock.run.sync import SYNC_STEPS, sync

    with ctx.progress(SYNC_STEPS, "sync") as bar:
        return sync(ctx.store(), ctx.backend(), ctx.config, now=ctx.now(), dry_run=dry_run, stage=bar.advance)


def sync_after_write(ctx):
    """sync() after a committed store write: a kernel failure must not read as "nothing happened"."""
    try:
        return run_sync(ctx)
    except NetblockError as exc:
        raise type(exc)(f"{exc} (the store is updated; `netblock sync` retries the kernel)") from None


def change_after_write(ctx, nets, *, cap_checked: bool = False):
    """sync_after_write() at the cost of the change of ``nets``, when the kernel proves it may (run/delta.py)."""
    from netblock.run.delta import sync_change

    try:
        return sync_change(ctx.store(), ctx.backend(), ctx.config, list(nets), now=ctx.now(),
                           full=lambda: run_sync(ctx), cap_checked=cap_checked)
    except NetblockError as exc:
        raise type(exc)(f"{exc} (the store is updated; `netblock sync` retries the kernel)") from None


def report_sync(ctx, result) -> None:
    for note in result.notes:
        ctx.warn(note)
    c = result.change
    ctx.print(f"kernel: {result.count} netblocks "
              f"(+{len(c.added)} -{len(c.removed)} ~{len(c.updated)})")


# ---------------------------------------------------------------- handlers

def cmd_add(args, ctx) -> int:
    """_add() without the cyclic garbage collector.

    `add -` of 100k makes some million objects that live to the end (targets,
    blocks, store rows, plan keys) and no reference cycles: each collection
    walked them all again, a tenth of the run. Acyclic garbage is still freed
    as it goes; the collector is back on when the command returns.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _add(args, ctx)
    finally:
        if collecting:
            gc.enable()


def _add(args, ctx) -> int:
    if args.permanent and args.ttl is not None:
        raise BadInput(f"--ttl {args.ttl} and --permanent exclude each other")
    config = ctx.config
    ttl = None if args.ttl is None else parse_ttl(args.ttl, config)
    items: list[tuple[str, str, str]] = []  # (text, where, source)
    stdin_read = False
    for text in args.targets:
        if text == "-":
            if not stdin_read:
                stdin_read = True
                items += [(t, w, "list") for t, w in read_target_lines(ctx.stdin)]
        else:
            items.append((text, "argument", "cli"))
    if not items:
        ctx.warn("no targets read from stdin")

    with ctx.progress(len(items), "checking") as bar:
        nets, keys = _parse([(t, w) for t, w, _ in items], ctx, force=args.force,
                            progress=bar if len(items) > 1000 else None)
    store = ctx.store()
    now = ctx.now()
    guard = manual.refusals(store, config, now)
    screened = _Screen(nets, keys, guard, config, args.force)
    for i in screened.suspects:
        net, (text, where, _source) = nets[i], items[i]
        label = f"{where}: {text}" if where.startswith("stdin") else text
        check_width(net, config, args.force, label)
        why = guard.why(net)
        if why:
            raise BadInput(f"{label}: refused: {why}")
    first_at: dict = {}  # the key of each netblock -> where it first appears (the first source wins)
    for i, key in enumerate(keys):
        first_at.setdefault(key if key >= 0 else _key_of(nets[i]), i)
    unique = list(first_at.values())

    fresh = again = 0
    with store.transaction():
        # A bulk load into an empty store remembers nothing: spared hashing 100k netblocks to find that out.
        known = {} if len(unique) > 1000 and not store.count_blocks() else \
            manual.remembered(store, dict.fromkeys(nets[i] for i in unique))
        blocks = []
        first_of: dict[str, Block] = {}  # source -> the first new block made for it
        for i in unique:
            net, source = nets[i], items[i][2]
            old = known.get(net) if known else None
            if old is None:
                fresh += 1
                model = first_of.get(source)
                if model is not None:
                    blocks.append(_renamed(model, net))
                    continue
            else:
                again += 1
            b = manual.block(net, old, now=now, ttl=ttl, permanent=args.permanent,
                             reason=args.reason, source=source, rules=config.blocks)
            blocks.append(b)
            if old is None:
                first_of[source] = b
        check_cap(store, config, now, add=blocks)  # refused here, nothing is written
        store.put_blocks(blocks)
    if len(blocks) == 1:
        b = blocks[0]
        until = "permanently" if b.expires is None else f"until {iso(b.expires)}"
        extra = f" (re-block #{b.reblocks})" if b.reblocks else ""
        ctx.print(f"blocked {host_mask(b.netblock)} {until}{extra}")
    else:
        ctx.print(f"blocked {len(blocks)} netblocks ({fresh} new, {again} re-blocked)")
    window = durations.format(config.policy.delivered_window, weeks=True)
    for b in screened.carving(unique, blocks):
        for prot, label in guard.carved(b.netblock):
            ctx.print(f"carved out {host_mask(prot)} from {host_mask(b.netblock)} ({label.removeprefix('protected: ')})")
        for prot, _ in guard.delivered.carved(b.netblock) if guard.delivered is not None else ():
            ctx.print(f"not carved out: {host_mask(prot)} delivered mail within {window}, "
                      f"but a block made by hand wins ({host_mask(b.netblock)})")
    report_sync(ctx, change_after_write(ctx, [b.netblock for b in blocks], cap_checked=True))
    return 0


def _key_of(net: IPNetwork):
    """What tells two netblocks apart, as the key _parse() gives canonical IPv4 text: a netblock is equal
    to another exactly when (version, first, prefix length) are."""
    return net.value << 8 | net.prefixlen if net.version == 4 else (net.version, net.value, net.prefixlen)


class _Screen:
    """Which targets of `add` the per-target checks and the carve-out report need to look at.

    check_width() refuses a prefix wider than the config allows; the guard
    (manual.Refusals) refuses a target inside one of its merged protected
    spans (``merged``) and carves out of a target those it overlaps. A list of
    100k IPv4 targets is screened here in arrays against those very spans,
    so only the targets that may be refused or carved (and every target not
    read as canonical IPv4) go through the checks themselves, in order: the
    same first error, the same lines.
    """

    def __init__(self, nets: list[IPNetwork], keys: list[int], guard, config, force: bool):
        self.suspects: Iterable[int] = range(len(nets))
        self.touching: Any = None  # numpy bools: the target may have carve-outs (None: ask for every one)
        if len(keys) < SCREEN_AT:
            return
        from netblock.lazynp import np

        k = np.array(keys, dtype=np.int64)
        canonical = k >= 0
        first = k >> 8
        plen = k & 255
        last = first + (np.int64(1) << (32 - plen)) - 1
        suspect = ~canonical
        if not force:
            suspect |= canonical & (plen < config.blocks.max_prefix_v4)
        touching = np.zeros(len(k), dtype=bool)
        for refusals in (guard, guard.delivered):
            spans = refusals.merged.get(4) if refusals is not None else None
            if not spans:
                continue
            firsts, lasts = (np.array(v, dtype=np.int64) for v in spans)
            at = np.searchsorted(firsts, first, side="right") - 1  # the merged span starting at or before us
            held = (at >= 0) & (lasts[np.maximum(at, 0)] >= last)
            if refusals is guard:
                suspect |= canonical & held
            ends = np.searchsorted(firsts, last, side="right") - 1  # the one starting at or before our last
            touching |= (ends >= 0) & (lasts[np.maximum(ends, 0)] >= first)
        self.suspects = np.flatnonzero(suspect).tolist()
        self.touching = touching | ~canonical

    def carving(self, unique: list[int], blocks: list[Block]) -> Iterable[Block]:
        """The blocks (made from the targets at ``unique``) whose carve-outs are worth asking for."""
        if self.touching is None:
            return blocks
        touching = self.touching.tolist()
        return [b for i, b in zip(unique, blocks) if touching[i]]


def _renamed_checked(block: Block, net: IPNetwork) -> Block:
    return dataclasses.replace(block, netblock=net)


def _renamed_fast(block: Block, net: IPNetwork) -> Block:
    new = _new_block(Block)
    fields = new.__dict__
    fields.update(block.__dict__)
    fields["netblock"] = net
    return new


_new_block = object.__new__
# manual.block() of a netblock the store does not remember depends on the netblock only in its
# netblock field: `add -` of 100k makes the first such block and copies it with the others' netblocks.
# Filling a copy's fields directly is a fifth of dataclasses.replace()'s cost, and is used while Block
# is the plain frozen dataclass it was written for (equal, and just as immutable).
_renamed = (_renamed_fast
            if [f.name for f in dataclasses.fields(Block)] == list(Block.__annotations__)
            and not hasattr(Block, "__slots__") and not hasattr(Block, "__post_init__")
            else _renamed_checked)


def cmd_del(args, ctx) -> int:
    nets = parse_targets([(t, "argument") for t in args.targets], ctx, any_width=True)
    store = ctx.store()
    with store.transaction():
        for net, text in zip(nets, args.targets):
            if store.get_block(net) is None:
                raise BadInput(f"{text}: not in the store (see `netblock list --all`)")
        gone = store.delete_blocks(dict.fromkeys(nets))
    for net in gone:
        ctx.print(f"deleted {host_mask(net)}")
    report_sync(ctx, change_after_write(ctx, gone))
    return 0


def block_json(b: Block) -> dict:
    return {"netblock": str(b.netblock), "reason": b.reason, "source": b.source,
            "created": iso(b.created), "expires": iso(b.expires)}


def cmd_list(args, ctx) -> int:
    now = ctx.now()
    blocks = ctx.store().blocks(now=None if args.all else now)
    if args.json:
        ctx.print_json([block_json(b) for b in blocks])
        return 0
    if not blocks:
        ctx.print("no blocks" if args.all else "no active blocks")
        return 0
    rows = []
    for b in blocks:
        if b.expires is None:
            expires = "never"
        else:
            expires = f"{iso(b.expires)}{' (expired)' if b.expires <= now else ''}"
        rows.append([str(b.netblock), expires, iso(b.created) or "-", printable(b.source), str(b.reblocks),
                     printable(b.reason) or "-"])
    for line in table(rows, ["NETBLOCK", "EXPIRES", "CREATED", "SOURCE", "REBLOCKS", "REASON"]):
        ctx.print(line)
    return 0


def cmd_allow_add(args, ctx) -> int:
    nets = parse_targets([(t, "argument") for t in args.cidrs], ctx, any_width=True)
    store = ctx.store()
    now = ctx.now()
    entries = [AllowEntry(netblock=net, comment=args.comment, created=now) for net in dict.fromkeys(nets)]
    with store.transaction():
        store.allow_add(entries)
    for e in entries:
        ctx.print(f"allowed {host_mask(e.netblock)}")
    report_sync(ctx, change_after_write(ctx, [e.netblock for e in entries]))
    return 0


def cmd_allow_del(args, ctx) -> int:
    nets = parse_targets([(t, "argument") for t in args.cidrs], ctx, any_width=True)
    store = ctx.store()
    with store.transaction():
        present = {e.netblock for e in store.allowlist()}
        for net, text in zip(nets, args.cidrs):
            if net not in present:
                raise BadInput(f"{text}: not in the allowlist (see `netblock allow list`)")
        check_cap(store, ctx.config, ctx.now(), unallow=nets)
        gone = store.allow_del(dict.fromkeys(nets))
    for net in gone:
        ctx.print(f"no longer allowed: {host_mask(net)}")
    report_sync(ctx, change_after_write(ctx, gone, cap_checked=True))
    return 0


def cmd_allow_list(args, ctx) -> int:
    entries = [{"netblock": str(e.netblock), "comment": e.comment, "created": iso(e.created), "source": "store"}
               for e in ctx.store().allowlist()]
    entries += [{"netblock": str(IPNetwork(t)), "comment": "", "created": None, "source": "config"}
                for t in ctx.config.blocks.allow]
    if args.json:
        ctx.print_json(entries)
        return 0
    if not entries:
        ctx.print("allowlist is empty")
        return 0
    rows = [[e["netblock"], e["created"] or "(config)", printable(e["comment"]) or "-"] for e in entries]
    for line in table(rows, ["NETBLOCK", "CREATED", "COMMENT"]):
        ctx.print(line)
    return 0


def cmd_expire(args, ctx) -> int:
    done = expiry.expire(ctx.store(), ctx.now(), ctx.config.blocks.max_ttl)
    newly, purge = done.newly, done.purged
    result = sync_after_write(ctx)
    if args.json:
        ctx.print_json({"expired": [block_json(b) for b in newly], "purged": [block_json(b) for b in purge],
                        "kernel": change_json(result)})
        return 0
    for b in newly:
        ctx.print(f"expired {host_mask(b.netblock)} at {iso(b.expires)}")
    for b in purge:
        ctx.print(f"purged {host_mask(b.netblock)} (expired {iso(b.expires)}, history no longer kept)")
    ctx.print(f"{len(newly)} expired, {len(purge)} purged from the store")
    report_sync(ctx, result)
    return 0


def change_json(result) -> dict:
    c = result.change
    return {"desired": len(result.desired), "added": [str(n) for n in c.added],
            "removed": [str(n) for n in c.removed], "updated": [str(n) for n in c.updated]}


def warn_rejected(ctx) -> list[dict]:
    """Each store row skipped on receipt, once per command (JSON: the list)."""
    from netblock.store.receipt import rejected

    rows = [{"table": t, "key": k, "why": why} for (t, k), why in sorted(rejected(ctx.store()).items())]
    for r in rows:
        ctx.warn(f"skipped a {r['table']} row from the store ({r['key']}): {r['why']}")
    return rows


def cmd_sync(args, ctx) -> int:
    result = run_sync(ctx, dry_run=args.dry_run)
    warn_rejected(ctx)
    if args.json:
        ctx.print_json(change_json(result) | {"dry_run": args.dry_run, "missing": result.missing,
                                              "left_out": result.notes})
        return 0
    if not args.dry_run:
        report_sync(ctx, result)
        return 0
    c = result.change
    for note in result.notes:
        ctx.warn(note)
    for net in c.added:
        ctx.print(f"+ {host_mask(net)}")
    for net in c.removed:
        ctx.print(f"- {host_mask(net)}")
    for net in c.updated:
        ctx.print(f"~ {host_mask(net)} expires {iso(result.desired[net]) or 'never'}")
    if result.missing:
        ctx.warn(f"{result.missing}")
    if not c and not result.missing:
        ctx.print(f"in sync ({len(result.desired)} netblocks)")
    return 0


MODE_TEXT = {
    "drop": "enforcing: drop",
    "reject": "enforcing: reject with TCP reset",
    "count": "COUNTING ONLY: nothing is dropped; `netblock report` shows the connection attempts "
             "each netblock would have dropped",
}


def verdict_status(backend, missing: str | None) -> dict:
    """The verdict configured, the one the kernel's rule has, and the `mode:` line of `status`."""
    from netblock.firewall import installed_verdict

    configured = backend.settings.verdict
    installed = None
    if missing is None:
        try:
            installed = installed_verdict(backend)
        except NetblockError:
            installed = None
    text = MODE_TEXT[configured]
    if missing is None and installed != configured:
        has = f"verdict {installed}" if installed else "a rule of other settings"
        text += f" (the kernel still has {has}: run `netblock sync`, or reload the daemon)"
    return {"verdict": configured, "installed": installed, "text": text}


def sources_status(config, now: datetime):
    """The sources the daemon and run-once read with this configuration (journal.choose(), auto-detection included)."""
    import os

    from netblock.sources import journal

    src = config.sources
    files = [os.path.abspath(p) for p in src.files]
    return journal.choose(files, src.journal, src.journal_units,
                          lambda: journal.detect(src.journal_units, now=now))


def file_source_warning(sources) -> str | None:
    """`status` warns once, on stderr, when log files are read: local users can forge their lines."""
    from netblock.sources import journal

    return journal.file_source_forgery_warning(sources)


def cmd_status(args, ctx) -> int:
    from netblock.errors import StoreError
    from netblock.run.sync import drift as kernel_drift

    try:
        store = ctx.store()
    except StoreError as exc:  # a fleet's PostgreSQL may be away: say since when, and what the kernel keeps
        from netblock.run.fleet import status_unreachable

        return status_unreachable(ctx, exc, as_json=args.json)
    backend = ctx.backend()
    now = ctx.now()
    drift = kernel_drift(store, backend, ctx.config, now=now)
    missing = drift.absent
    mode = verdict_status(backend, missing)
    sources = sources_status(ctx.config, now)
    oldest = store.oldest_block()
    skipped = warn_rejected(ctx)
    info = {
        "backend": backend.name,
        "description": backend.description,
        "store": store.path,  # a DSN with its password masked
        "blocks_active": store.count_blocks(now),
        "blocks_stored": store.count_blocks(),
        "allowlist": len(store.allowlist()),
        "desired": drift.desired,
        "installed": drift.installed,
        "in_sync": not (drift.missing or drift.extra or drift.expiry) and missing is None,
        "kernel_objects": "missing" if missing else "present",
        "drift": {"missing": drift.missing, "extra": drift.extra, "expiry": drift.expiry},
        "oldest_block": None if oldest is None else {"netblock": str(oldest.netblock), "created": iso(oldest.created)},
        "next_expiry": iso(store.next_expiry(now)),
        "verdict": mode["verdict"],
        "verdict_installed": mode["installed"],
        "counting_only": mode["verdict"] == "count",
        "sources": {"mode": sources.mode, "files": list(sources.files), "journal": sources.journal,
                    "reason": sources.reason},
        "forgeable": bool(sources.files),
        "warnings": [w for w in (file_source_warning(sources),) if w],
        "rejected_rows": skipped,
    }
    if args.json:
        ctx.print_json(info)
        return 0
    if missing:
        state = f"NOT INSTALLED ({missing})"
    elif not info["in_sync"]:
        state = (f"DRIFTED: {drift.missing} missing, {drift.extra} extra, "
                 f"{drift.expiry} with another expiry (run `netblock sync`)")
    else:
        state = "in sync"
    lines = [
        ("backend", f"{backend.name} ({backend.description})"),
        ("mode", mode["text"]),
        ("sources", sources.reason),
        ("store", info["store"]),
        ("blocks", f"{info['blocks_active']} active, {info['blocks_stored']} stored (incl. expired history)"),
        ("allowlist", f"{info['allowlist']} entries"),
        ("kernel", f"{info['installed']} netblocks installed, {info['desired']} desired: {state}"),
        ("oldest block", "-" if oldest is None else f"{oldest.netblock} created {iso(oldest.created)}"),
        ("next expiry", info["next_expiry"] or "-"),
        ("sources", f"{len(sources.files)} file(s){', ' + ', '.join(sources.files) if sources.files else ''}; "
                    f"journal {'on' if sources.journal else 'off'} ({sources.reason})"),
        ("skipped rows", f"{len(skipped)} (unparseable, or beyond the width floors or coverage cap; "
                         "not installed)" if skipped else "0"),
    ]
    for key, value in lines:
        ctx.print(f"{key + ':':<14}{printable(value)}")
    for warning in info["warnings"]:
        ctx.warn(warning)
    return 0


def cmd_remove_rules(args, ctx) -> int:
    from netblock.errors import NetblockError
    from netblock.run.sampling import sample
    from netblock.run.sync import read_installed

    backend = ctx.backend()
    with kernel_lock(ctx.config.lock_file):
        # Absent objects have no counters to keep, and the store is not even
        # opened (a package's removal must not create one): remove() still
        # clears whatever part of the skeleton is left.
        _installed, missing = read_installed(backend)
        if missing is None:
            try:
                sample(ctx.store(), backend, ctx.now())  # the last drops count in reports
            except NetblockError as exc:
                ctx.warn(f"counters not sampled before removal: {exc}")
        backend.remove()
    if missing is not None:
        ctx.print(f"no netblock kernel objects were installed ({backend.description}); nothing left")
        return 0
    ctx.print(f"removed netblock's kernel objects ({backend.description}); the store is kept, "
              "`netblock sync` installs them again")
    return 0


def config_json(cfg) -> dict:
    """The TOML dump read back: JSON then shows exactly what `config` prints (durations as "7d")."""
    import tomllib

    from netblock import config as config_mod

    return tomllib.loads(config_mod.dump(cfg))


def cmd_config(args, ctx) -> int:
    from netblock import config as config_mod

    cfg = ctx.config
    from netblock.store.postgres import mask_dsn  # psycopg-free: only masks a DSN's password

    overrides = {"db": mask_dsn(ctx.db_path), "backend": ctx.backend_name}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        names = {f.name for f in dataclasses.fields(cfg)}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if k in names})
    if args.json:
        ctx.print_json(config_json(cfg))
    else:
        ctx.stdout.write(config_mod.dump(cfg))
    return 0


def cmd_aggregate(args, ctx) -> int:
    from netblock.aggregate import aggregate_text

    exclude = b""
    if args.exclude is not None:
        try:
            with open(args.exclude, "rb") as f:
                exclude = f.read()
        except OSError as exc:
            raise BadInput(f"--exclude {args.exclude}: {exc.strerror}") from None
    stdin = getattr(ctx.stdin, "buffer", ctx.stdin)
    data = stdin.read()
    out = aggregate_text(data, exclude)
    if args.json:
        ctx.print_json(out)
    elif out:
        ctx.stdout.write("\n".join(out) + "\n")
    return 0


# ---------------------------------------------------------------- registration

TARGET_HELP = ("an IPv4/IPv6 address or CIDR (198.18.1.7, 198.18.1.0/24, 2001:db8::/48); "
               "host bits are cleared with a warning")


def register(sub) -> None:
    p = sub.add_parser(
        "add", help="block netblocks (port 25 drop) and sync the kernel",
        description="Block each TARGET, then make the kernel equal to the store. All targets are checked "
        "first: one bad target refuses them all and changes nothing, and so does a change that would "
        "block more than 2^28 IPv4 addresses in total. The allowlist and this host's own addresses are "
        "carved out (one line names each); a sender that delivered mail recently is not: a block made "
        "by hand wins over that protection. A netblock the store still remembers "
        "(active, or expired but kept as history) is a repeat offender: its TTL grows by "
        "blocks.reblock_factor per re-block, up to blocks.max_ttl.")
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help=TARGET_HELP + "; `-` reads targets from stdin, one per line, first field only, "
                   "`#` and `;` comments (a Spamhaus DROP or FireHOL file loads as is)")
    p.add_argument("--ttl", metavar="DURATION",
                   help="how long the block lasts: 90s, 45m, 12h, 7d, 2w (default: blocks.default_ttl "
                   "from the config, 7d); escalated for repeat offenders, never beyond blocks.max_ttl")
    p.add_argument("--permanent", action="store_true",
                   help="never expire (default: off, blocks expire after their TTL)")
    p.add_argument("--reason", metavar="TEXT",
                   help="why, shown by `list` (default: empty, or the reason already stored for a re-block)")
    p.add_argument("--force", action="store_true",
                   help="allow prefixes wider than /8 (IPv4) or /32 (IPv6), i.e. blocks.max_prefix_v4/v6 "
                   "(default: off); nothing wider than /4 or /16 is ever accepted")
    p.set_defaults(handler=cmd_add)

    p = sub.add_parser("del", help="remove blocks from the store and the kernel",
                       description="Delete each TARGET's block (also its re-block history) and sync. "
                       "A TARGET not in the store is an error and nothing is deleted.")
    p.add_argument("targets", nargs="+", metavar="TARGET", help="a netblock exactly as blocked (" + TARGET_HELP + ")")
    p.set_defaults(handler=cmd_del)

    p = sub.add_parser("list", help="list blocks", description="List active blocks, sorted by address.")
    p.add_argument("--all", action="store_true",
                   help="also list expired blocks still kept as re-block history (default: active only)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON array of {netblock, reason, source, created, expires}; times are "
                   "ISO 8601 UTC, expires null when permanent (default: a table)")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("allow", help="the allowlist: addresses never blocked",
                       description="Allowlisted netblocks are carved out of every block (the block stays, "
                       "minus them) and refused as targets of `add`.")
    allow = p.add_subparsers(dest="allow_command", metavar="ACTION", required=True)
    a = allow.add_parser("add", help="allowlist netblocks and sync the kernel at once",
                         description="Allowlist each CIDR and carve it out of the kernel at once.")
    a.add_argument("cidrs", nargs="+", metavar="CIDR", help="an address or CIDR (any width except /0)")
    a.add_argument("--comment", metavar="TEXT", default="", help="why it is allowed (default: empty)")
    a.set_defaults(handler=cmd_allow_add)
    a = allow.add_parser("del", help="remove allowlist entries and sync",
                         description="Remove each CIDR from the allowlist; one not in it is an error "
                         "and nothing is removed. Entries from the config file stay.")
    a.add_argument("cidrs", nargs="+", metavar="CIDR", help="an entry exactly as listed by `allow list`")
    a.set_defaults(handler=cmd_allow_del)
    a = allow.add_parser("list", help="list the allowlist (store and config)",
                         description="List the allowlist: entries added with `allow add` and blocks.allow "
                         "from the config.")
    a.add_argument("--json", action="store_true",
                   help="print a JSON array of {netblock, comment, created, source} (default: a table)")
    a.set_defaults(handler=cmd_allow_list)

    p = sub.add_parser("expire", help="drop expired blocks from the kernel, purge old history",
                       description="Remove expired blocks from the kernel (by syncing) and purge store rows "
                       "that expired more than blocks.max_ttl ago; until then they are re-block history. "
                       "Prints the blocks that expired since the last `expire`.")
    p.add_argument("--json", action="store_true",
                   help="print a JSON object {expired, purged, kernel}; blocks as in `list --json` "
                   "(default: text)")
    p.set_defaults(handler=cmd_expire)

    p = sub.add_parser("sync", help="make the kernel equal to the store",
                       description="Install the aggregated active blocks minus the protected space "
                       "(built-in ranges, allowlist, this host's addresses; recent deliverers out of the "
                       "policy's blocks only) in one transaction, touching only the difference. A change "
                       "that would block more than 2^28 IPv4 addresses is refused whole; store rows wider "
                       "than /4 or /16, and widened blocks over [policy] max_elements_per_block, are left "
                       "out with a warning.")
    p.add_argument("--dry-run", action="store_true",
                   help="print the difference (`+ CIDR` to add, `- CIDR` to remove, `~ CIDR` new expiry) "
                   "and change nothing (default: off)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON object {desired, added, removed, updated, dry_run, missing, left_out} "
                   "(default: text)")
    p.set_defaults(handler=cmd_sync)

    p = sub.add_parser("status", help="backend, store and kernel at a glance",
                       description="Show the backend, block counts, kernel element count, whether the "
                       "kernel equals the store, the oldest block and the next expiry.")
    p.add_argument("--json", action="store_true", help="print a JSON object (default: text)")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("remove-rules", help="remove netblock's kernel objects (the store is kept)",
                       description="Tear down everything the backend created in the kernel, nothing else. "
                       "The store is kept; `netblock sync` reinstalls.")
    p.set_defaults(handler=cmd_remove_rules)

    p = sub.add_parser("config", help="print the effective configuration",
                       description="Print the configuration in effect: the file's values, defaults for "
                       "the rest, --db/--backend applied.")
    p.add_argument("--json", action="store_true", help="print JSON (default: TOML)")
    p.set_defaults(handler=cmd_config)

    p = sub.add_parser("aggregate", help="merge IPs/CIDRs from stdin into the fewest CIDRs",
                       description="Read IPs/CIDRs on stdin (one per line, `#` comments, first field only) "
                       "and print the fewest CIDRs covering exactly them, one per line. Touches no store "
                       "and no kernel.")
    p.add_argument("--exclude", metavar="FILE",
                   help="carve these IPs/CIDRs (same format) out of the result (default: none)")
    p.add_argument("--json", action="store_true", help="print a JSON array of strings (default: one per line)")
    p.set_defaults(handler=cmd_aggregate)
