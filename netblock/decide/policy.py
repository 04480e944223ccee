"""The blocking policy: when observations become blocks, and why.

Per rejection class the configuration says how many observations from one
address within a window make a block, how long the block lives, and whether
the class feeds density widening. ``decide()`` is a pure function of the store
(and the clock): run twice on the same store it returns the same blocks, with
the expiry anchored on the *last* offending observation rather than on "now",
so re-deciding an active block on every tick does not push its expiry (and the
kernel's timeout) forward by itself; only new offences do.

Senders that delivered accepted mail recently, allowlisted space and the
built-in protected ranges are never decided on. A widened prefix that would
swallow one of them is still decided: aggregation carves the protected
addresses out of it at sync time, so the rest of the botnet's /24 is blocked.

With ``[routed] enabled`` the same offenders also widen to the prefix their
provider announces (netblock/decide/routed.py says when, and why those defaults).

``explain()`` answers ``netblock why``: the observations, the rule that did or
did not fire, the widening that covers the address, or what protects it.

Why this module is long: the policy's steps (count, threshold, widen, protect,
extend) share the tick's indexes; protection and widening are candidates for
decide/ modules of their own (issue 16).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Iterable, Iterator

import numpy as np
from netaddr import IPAddress, IPNetwork

from netblock import durations, limits
from netblock.aggregate import WidenRule, address_int, widen_detail, widen_spans
from netblock.decide.manual import later
from netblock.decide.protect import Protection, overlap, protection
from netblock.model import MANUAL_SOURCES, NOT_OFFENCES, Block, Observation, host_mask

SOURCE = "policy"


@dataclass(frozen=True)
class ClassRule:
    """One class's rule: threshold observations within window → block for ttl."""

    name: str  # "dnsbl" covers every "dnsbl:ZONE"
    threshold: int
    window: timedelta
    ttl: timedelta | None  # None: permanent
    widen: bool


# -- reading the configuration ------------------------------------------------

def class_rules(config) -> dict[str, ClassRule]:
    """``[policy.classes]`` as ClassRules; a class without a window uses ``policy.window``."""
    policy = config.policy
    out = {}
    for name, spec in policy.classes.items():
        ttl = spec.ttl
        if isinstance(ttl, timedelta) and ttl <= timedelta(0):
            ttl = None
        out[name] = ClassRule(name, int(spec.threshold), spec.window or policy.window, ttl, bool(spec.widen))
    return out


def rule_for(rules: dict[str, ClassRule], cls: str) -> ClassRule | None:
    """The rule of an observation class: its own, else its family's (``dnsbl:ZONE`` → ``dnsbl``)."""
    rule = rules.get(cls)
    if rule is None and ":" in cls:
        rule = rules.get(cls.split(":", 1)[0])
    return rule


@dataclass(frozen=True)
class WidenSettings:
    enabled: bool
    rules: tuple[WidenRule, ...]
    window: timedelta
    max_prefixlen: dict[int, int]


def widen_settings(config) -> WidenSettings:
    w = config.widen
    limits = {4: w.max_prefix_v4, 6: w.max_prefix_v6}
    return WidenSettings(w.enabled, tuple(w.rules), w.window or config.policy.window, limits)



# -- the element budget: a widened block that would cost too much falls back to its offenders --

def budget(config) -> int:
    """``[policy] max_elements_per_block``."""
    return config.policy.max_elements_per_block


def fallback_reason(net: IPNetwork, limit: int) -> str:
    return (f"offender in {net}: the widened block would take more than {limit} kernel elements "
            "with its protected addresses cut out")


def within_budget(block: Block, offenders: Iterable[tuple[IPAddress, datetime | None]], sh: Protection,
                  limit: int, now: datetime) -> list[Block]:
    """``[block]`` when cutting the protected space out of it costs at most ``limit`` kernel
    elements, else one block per offender (``(address, expiry)``) it was widened from.

    A thousand recent deliverers inside a widened /48 would otherwise cost
    about 69,000 elements (5,000 inside a /16): protection must not let a
    sender who gets a few messages through make the kernel's set explode.
    """
    if sh.carved().cost(block.netblock, limit) <= limit:
        return [block]
    text = fallback_reason(block.netblock, limit)
    out = []
    for ip, expires in offenders:
        if expires is not None and expires <= now:
            continue
        out.append(Block(IPNetwork(ip), text, SOURCE, now, expires))
    return out


# -- deciding ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Offence:
    """One address over one rule's threshold, with what the block would be.

    A rule counts all the classes it covers together: listings in two DNSBL
    zones are two ``dnsbl`` offences.
    """

    ip: IPAddress
    classes: tuple[str, ...]
    count: int
    last: datetime
    rule: ClassRule

    @property
    def expires(self) -> datetime | None:
        return None if self.rule.ttl is None else self.last + self.rule.ttl

    @property
    def label(self) -> str:
        if self.classes == (self.rule.name,):
            return self.rule.name
        return f"{self.rule.name} ({', '.join(self.classes)})"


def _offences(store, rules: dict[str, ClassRule], now: datetime, shield_: Protection,
              *, only: Iterable[str] | None = None, window: timedelta | None = None) -> list[Offence]:
    """Every (ip, rule) at or over the rule's threshold within its window (or ``window``).

    A class with threshold 0 never blocks on its own; for widening (``only``
    given) one observation of it makes an offender.
    """
    return list(_iter_offences(store, rules, now, shield_, only=only, window=window))


def _iter_offences(store, rules: dict[str, ClassRule], now: datetime, shield_: Protection,
                   *, only: Iterable[str] | None = None, window: timedelta | None = None) -> Iterator[Offence]:
    """_offences() one by one, for callers that fold them as they come (a storm has 100k)."""
    chosen = {n: r for n, r in rules.items()
              if (only is None and r.threshold > 0) or (only is not None and n in only)}
    by_window: dict[timedelta, list[str]] = {}
    for name, rule in chosen.items():
        by_window.setdefault(window or rule.window, []).append(name)
    for win, names in by_window.items():
        since = now - win
        stats = store.offender_stats(since, classes=names)
        totals: dict[tuple[IPAddress, str], list] = {}
        rule_of: dict[str, ClassRule | None] = {}
        for (ip, cls), (n, last) in stats.items():
            rule = rule_of[cls] if cls in rule_of else rule_of.setdefault(cls, rule_for(rules, cls))
            if rule is None or rule.name not in names:
                continue  # a class with a rule of its own, counted there
            entry = totals.get((ip, rule.name))
            if entry is None:
                totals[ip, rule.name] = [n, (cls,), last]
            else:
                entry[0] += n
                entry[1] += (cls,)
                entry[2] = max(entry[2], last)
        del stats
        for (ip, name), (n, classes, last) in totals.items():
            rule = rules[name]
            if n < max(rule.threshold, 1) or shield_.covers(ip):
                continue
            yield Offence(ip, classes if len(classes) == 1 else tuple(sorted(set(classes))), n, last, rule)


def decide(store, config, now: datetime) -> list[Block]:
    """The policy blocks the store's observations call for at ``now`` (no writes)."""
    rules = class_rules(config)
    if not rules:
        return []
    sh = protection(store, config, now)
    # Widening first, while nothing else is held: each pass loads every
    # offender from the store, and a storm's per-address blocks are many.
    # The per-address blocks still take precedence over a widened one.
    wider = _widened(store, rules, config, now, sh) + _routed(store, rules, config, now, sh)
    decided: dict[IPNetwork, Block] = {}
    # A storm repeats a few reasons and expiries 100k times: share equal ones.
    same: dict = {}
    for off in _iter_offences(store, rules, now, sh):
        expires = off.expires
        if expires is not None and expires <= now:
            continue
        if expires is not None:
            expires = same.setdefault((expires, expires.tzinfo), expires)
        net = IPNetwork(off.ip)
        reason = (f"{off.count} {off.label} within {durations.format(off.rule.window)} "
                  f"(threshold {off.rule.threshold})")
        reason = same.setdefault(reason, reason)
        block = Block(net, reason, SOURCE, now, expires)
        old = decided.get(net)
        if old is None or (old.expires is not None and (block.expires is None or block.expires > old.expires)):
            decided[net] = block
    for block in wider:
        decided.setdefault(block.netblock, block)
    return sorted(decided.values(), key=lambda b: (b.netblock.version, b.netblock.first, b.netblock.prefixlen))


def _widened(store, rules, config, now, sh: Protection) -> list[Block]:
    ws = widen_settings(config)
    names = [n for n, r in rules.items() if r.widen]
    if not ws.enabled or not ws.rules or not names:
        return []
    ends = _OffenderEnds()
    for off in _iter_offences(store, rules, now, sh, only=names, window=ws.window):
        ends.add(off.ip, off.expires)
    if not ends:
        return []
    v4, v6 = ends.offenders()
    found = sorted(widen_spans(v4, v6, ws.rules, ws.max_prefixlen), key=lambda w: w[0].prefixlen)
    kept: list = []
    for w in found:
        if any(overlap(k[0], w[0]) for k in kept):
            continue  # a wider prefix already covers it
        kept.append(w)
    out = []
    limit = budget(config)
    for net, rule, addrs, lo, hi in kept:
        found_any, expires = ends.latest(net)
        if not found_any:
            continue
        if expires is not None and expires <= now:
            continue
        reason = f"widened: {hi - lo} offenders in {net}"
        offenders = (ends.own_end(IPAddress(int(a), rule.family), expires) for a in addrs[lo:hi].tolist())
        out += within_budget(Block(net, reason, SOURCE, now, expires), offenders, sh, limit, now)
    return out


class _OffenderEnds:
    """The latest expiry per widening offender, in sorted integer arrays instead of a dict of addresses.

    An IPv4-mapped IPv6 offender counts for widening as its IPv4 address, but
    its expiry belongs to the IPv6 address, which no widened IPv4 prefix
    holds: only offenders whose folded family is their own lend an expiry.
    """

    _PERMANENT = float("inf")

    def __init__(self) -> None:
        self._v4: list[int] = []
        self._v6: list[int] = []
        self._own: dict[int, list[int]] = {4: [], 6: []}
        self._keys: dict[int, list[float]] = {4: [], 6: []}
        self._when: dict[int, list[datetime | None]] = {4: [], 6: []}

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def add(self, ip: IPAddress, expires: datetime | None) -> None:
        family, value = address_int(ip)
        (self._v4 if family == 4 else self._v6).append(value)
        if family != ip.version:
            return
        self._own[family].append(value)
        self._keys[family].append(self._PERMANENT if expires is None else expires.timestamp())
        self._when[family].append(expires)

    def offenders(self) -> tuple[np.ndarray, list[int]]:
        """Sorted distinct offender integers per family, for widen_spans()."""
        v4 = np.unique(np.array(self._v4, dtype=np.int64))
        v6 = sorted(set(self._v6))
        self._v4 = self._v6 = []
        self._index: dict[int, tuple] = {}
        for family in (4, 6):
            values = np.array(self._own[family], dtype=np.int64 if family == 4 else object)
            order = np.argsort(values, kind="stable")
            self._index[family] = (values[order], np.array(self._keys[family], dtype=np.float64)[order], order)
        return v4, v6

    def own_end(self, ip: IPAddress, default: datetime | None) -> tuple[IPAddress, datetime | None]:
        """(ip, the expiry of its own offences), or ``default`` for an IPv4-mapped one counted as IPv4."""
        found, expires = self.latest(IPNetwork(ip))
        return ip, (expires if found else default)

    def latest(self, net: IPNetwork) -> tuple[bool, datetime | None]:
        """(any offender inside ``net`` has an expiry, the latest of them; None when one is permanent)."""
        values, keys, order = self._index[net.version]
        lo, hi = int(np.searchsorted(values, net.first)), int(np.searchsorted(values, net.last, side="right"))
        if lo == hi:
            return False, None
        k = lo + int(np.argmax(keys[lo:hi]))
        return True, self._when[net.version][int(order[k])]


# -- widening to announced prefixes (netblock/decide/routed.py) -------------------------------

def _routed_input(store, rules, config, now, sh: Protection):
    """(settings, table, offences) for the routed level, or None while it is off."""
    from netblock.decide import asn, routed

    rs = routed.settings(config)
    names = [n for n, r in rules.items() if r.widen]
    if not rs.enabled or not names:
        return None
    return rs, asn.from_config(config), _offences(store, rules, now, sh, only=names, window=rs.window)


def _routed(store, rules, config, now, sh: Protection) -> list[Block]:
    from netblock.decide import routed

    found = _routed_input(store, rules, config, now, sh)
    if found is None:
        return []
    rs, table, offences = found
    ends: dict[IPAddress, datetime | None] = {}
    for off in offences:
        ends[off.ip] = off.expires if off.ip not in ends else later(ends[off.ip], off.expires)
    limit = budget(config)
    out = []
    for block in routed.blocks(offences, table, rs, sh.builtin + sh.allowlist + sh.own, now):
        inside = ((ip, e) for ip, e in ends.items() if ip.version == block.netblock.version and ip in block.netblock)
        out += within_budget(block, inside, sh, limit, now)
    return out


def _routed_for(store, rules, config, now, sh: Protection, net: IPNetwork) -> list[dict]:
    """The routed candidates ``why`` shows: blocked ones overlapping ``net``, refused ones holding it."""
    from netblock.decide import routed

    given = _routed_input(store, rules, config, now, sh)
    if given is None:
        return []
    rs, table, offences = given
    classes: dict[IPAddress, set[str]] = {}
    for off in offences:
        classes.setdefault(off.ip, set()).update(off.classes)
    candidates = routed.assess(list(classes), table, rs, sh.builtin + sh.allowlist + sh.own)

    def holds(c) -> bool:
        return c.netblock.first <= net.first and net.last <= c.netblock.last

    shown = [c for c in candidates if c.blocked and overlap(c.netblock, net)]
    if not any(holds(c) for c in shown):
        shown += [c for c in candidates if not c.blocked and holds(c)]
    named = {ip: sorted(c) for ip, c in classes.items()}
    return [routed.describe(c, table, named) for c in shown]


def record(store, decided: Iterable[Block], now: datetime) -> list[Block]:
    """Write decisions to the store without churn; returns the blocks that are new or extended.

    An active block is only touched when the decision expires later than it
    does; a hand-made (cli/list) block keeps its reason and source. A block
    that had expired counts as re-blocked.
    """
    changed = []
    with store.transaction():
        for block in decided:
            if limits.too_wide(block.netblock):
                continue  # never, whatever the configuration says (limits.py)
            old = store.get_block(block.netblock)
            if old is None:
                new = block
            elif old.expires is not None and old.expires <= now:
                new = replace(block, reblocks=old.reblocks + 1)
            elif old.expires is None:
                continue
            elif block.expires is None or block.expires > old.expires:
                if old.source == SOURCE:
                    new = replace(block, created=old.created, reblocks=old.reblocks)
                elif not getattr(store, "may_write", lambda source: True)(old.source):
                    continue  # the admin's block: a fleet host's role leaves it as it is
                else:
                    new = replace(old, expires=block.expires)
            else:
                continue
            changed.append(new)
        if changed:
            store.put_blocks(changed)
    return changed


# -- explaining ----------------------------------------------------------------------

@dataclass
class Check:
    """One class's rule applied to one address."""

    ip: str
    cls: str
    count: int
    threshold: int
    window: timedelta
    ttl: timedelta | None
    fired: bool
    expires: datetime | None
    note: str = ""


@dataclass
class Explanation:
    target: IPNetwork
    observations: list[Observation]
    checks: list[Check]
    blocks: list[Block]  # active store blocks overlapping the target
    widened: list[dict]  # {"netblock", "offenders", "rule"} of widening covering it
    protected: list[tuple[str, str]]  # (kind, netblock)
    verdict: str
    routed: list[dict] = field(default_factory=list)  # routed.describe() of announced prefixes holding it
    overridden: list[tuple[str, str]] = field(default_factory=list)  # (deliverer, the manual block that wins)
    left_out: list[tuple[str, int]] = field(default_factory=list)  # (stored policy prefix over budget, budget)

    def to_dict(self) -> dict:
        return {
            "target": host_mask(self.target),
            "verdict": self.verdict,
            "observations": [
                {"time": o.time, "ip": str(o.ip), "class": o.cls, "mta": o.mta,
                 "source": o.source, "position": o.position}
                for o in self.observations
            ],
            "rules": [
                {"ip": c.ip, "class": c.cls, "count": c.count, "threshold": c.threshold,
                 "window": durations.format(c.window), "ttl": None if c.ttl is None else durations.format(c.ttl),
                 "fired": c.fired, "expires": c.expires, "note": c.note}
                for c in self.checks
            ],
            "blocks": [
                {"netblock": str(b.netblock), "reason": b.reason, "source": b.source,
                 "created": b.created, "expires": b.expires}
                for b in self.blocks
            ],
            "widened": self.widened,
            "protected": [{"kind": k, "netblock": n} for k, n in self.protected],
            "routed": self.routed,
            "overridden": [{"kind": "delivered", "netblock": n, "by": by} for n, by in self.overridden],
            "left_out": [{"netblock": n, "max_elements": limit} for n, limit in self.left_out],
        }


def parse_target(text: str) -> IPNetwork:
    """The address or prefix ``why`` asks about, parsed as strictly as ``netblock add`` does."""
    from netblock.decide.targets import parse_target as strict

    return strict(text, any_width=True).netblock


def explain(store, config, target: IPNetwork | str, now: datetime, *, own: Iterable[IPNetwork] = ()) -> Explanation:
    """Everything ``netblock why`` says about an address or prefix."""
    net = parse_target(target) if isinstance(target, str) else target
    rules = class_rules(config)
    ws = widen_settings(config)
    sh = protection(store, config, now, own=own)
    longest = max([r.window for r in rules.values()] + [ws.window if ws.enabled else timedelta(0)],
                  default=timedelta(days=1))
    since = now - longest
    if net.size == 1:
        obs = store.observations(since=since, ip=net.ip)
    else:
        obs = [o for o in store.observations(since=since)
               if o.ip.version == net.version and o.ip in net]
    checks = _checks(obs, rules, now, sh)
    blocks = [b for b in store.blocks(now=now) if overlap(b.netblock, net)]
    limit = budget(config)
    left_out = [b for b in blocks if b.source == SOURCE and b.netblock.size > 1
                and sh.carved().cost(b.netblock, limit) > limit]  # sync leaves these out (sync.screen)
    blocks = [b for b in blocks if b not in left_out]
    widened = _widening_for(store, rules, config, now, sh, net, ws)
    announced = _routed_for(store, rules, config, now, sh, net)
    protected, overridden = _by_hand_wins(sh.why(net), blocks)
    live = [w for w in widened if not w["fallback"]]
    verdict = _verdict(net, blocks, checks, live or [r for r in announced if r["blocked"]], protected)
    if overridden and verdict.startswith("blocked"):
        verdict += "; it delivered mail recently, but a block made by hand wins over that protection"
    return Explanation(net, obs, checks, blocks, widened, protected, verdict, announced, overridden,
                       [(str(b.netblock), limit) for b in left_out])


def _by_hand_wins(protections: list[tuple[str, str]], blocks: list[Block]
                  ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(protections that hold, (deliverer, manual block) pairs where a block made by hand wins).

    Sync carves recent deliverers out of the policy's blocks only (protect.for_sync).
    """
    manual = [b.netblock for b in blocks if b.source in MANUAL_SOURCES]
    held, overridden = [], []
    for kind, text in protections:
        if kind == "delivered":
            ip = IPAddress(text)
            by = next((m for m in manual if m.version == ip.version and ip in m), None)
            if by is not None:
                overridden.append((text, str(by)))
                continue
        held.append((kind, text))
    return held, overridden


def _checks(obs: list[Observation], rules, now: datetime, sh: Protection) -> list[Check]:
    """Each address's offences grouped by the rule that counts them (or by class, if none does)."""
    groups: dict[tuple[IPAddress, str], list[Observation]] = {}
    for o in obs:
        if o.cls in NOT_OFFENCES:
            continue
        rule = rule_for(rules, o.cls)
        groups.setdefault((o.ip, rule.name if rule else o.cls), []).append(o)
    out = []
    for (ip, name), items in sorted(groups.items(), key=lambda kv: (kv[0][0].version, kv[0][0], kv[0][1])):
        rule = rules.get(name)
        classes = sorted({o.cls for o in items})
        label = name if classes == [name] else f"{name} ({', '.join(classes)})"
        if rule is None:
            out.append(Check(str(ip), label, len(items), 0, timedelta(0), None, False, None,
                             "no rule for this class: it never blocks"))
            continue
        if rule.threshold < 1:
            out.append(Check(str(ip), label, len(items), 0, rule.window, rule.ttl, False, None,
                             "threshold 0: this class never blocks on its own"
                             + (" (it feeds widening)" if rule.widen else "")))
            continue
        inside = [o for o in items if o.time >= now - rule.window]
        last = max((o.time for o in inside), default=None)
        expires = None if last is None or rule.ttl is None else last + rule.ttl
        fired = len(inside) >= rule.threshold
        note = ""
        if fired and sh.covers(ip):
            fired, note = False, "over the threshold, but protected"
        elif fired and expires is not None and expires <= now:
            fired, note = False, "over the threshold, but the block has run out"
        elif not fired:
            note = f"{len(inside)} of {rule.threshold} needed within {durations.format(rule.window)}"
        out.append(Check(str(ip), label, len(inside), rule.threshold, rule.window, rule.ttl,
                         fired, expires if fired else None, note))
    return out


def _widening_for(store, rules, config, now, sh, net: IPNetwork, ws: WidenSettings) -> list[dict]:
    names = [n for n, r in rules.items() if r.widen]
    if not ws.enabled or not ws.rules or not names:
        return []
    offenders = {o.ip for o in _offences(store, rules, now, sh, only=names, window=ws.window)}
    limit = budget(config)
    out = []
    for w in widen_detail(list(offenders), ws.rules, ws.max_prefixlen):
        if overlap(w.netblock, net):
            rule = w.rule
            cost = sh.carved().cost(w.netblock, limit)
            out.append({
                "netblock": str(w.netblock),
                "offenders": [str(ip) for ip in w.offenders],
                "rule": {"family": f"ipv{rule.family}", "prefixlen": rule.prefixlen,
                         "min_count": rule.min_count, "unit_prefixlen": rule.unit_prefixlen},
                # kernel elements with the protected space cut out ("more than" max once over it)
                "elements": cost,
                "max_elements": limit,
                "fallback": cost > limit,
            })
    return out


def _verdict(net, blocks, checks, widened, protected) -> str:
    if protected and any(k != "delivered" or net.size == 1 for k, _ in protected):
        kinds = sorted({k for k, _ in protected})
        head = f"protected ({', '.join(kinds)}): never dropped"
        return head + ("; blocks overlapping it are carved around it" if blocks else "")
    if blocks:
        return "blocked: " + "; ".join(f"{b.netblock} ({b.reason})" for b in blocks)
    if any(c.fired for c in checks):
        return "over a threshold: blocked at the next sync"
    if widened:
        return "inside a widened prefix: blocked at the next sync"
    if checks:
        return "not blocked: no rule reached its threshold"
    return "not blocked: no offences observed"


def render(ex: Explanation) -> list[str]:
    """Human-readable lines for ``netblock why``."""
    lines = [f"{host_mask(ex.target)}: {ex.verdict}"]
    if ex.observations:
        lines.append("observations:")
        for o in ex.observations:
            # a file's position is the byte offset of the line (the journal has none worth showing)
            where = "-" if not o.source else o.source if o.source == "journal" else f"{o.source} byte {o.position}"
            lines.append(f"  {o.time:%Y-%m-%d %H:%M:%S}Z  {o.ip}  {o.cls}  {o.mta}  {where}")
    if ex.checks:
        lines.append("rules:")
        for c in ex.checks:
            if c.threshold == 0:
                lines.append(f"  {c.ip} {c.cls}: {c.count} seen; {c.note}")
                continue
            ttl = "permanent" if c.ttl is None else durations.format(c.ttl)
            state = "BLOCK" if c.fired else "no block"
            extra = f" until {c.expires:%Y-%m-%d %H:%M:%S}Z" if c.fired and c.expires else ""
            note = f" ({c.note})" if c.note else ""
            lines.append(f"  {c.ip} {c.cls}: {c.count} seen, threshold {c.threshold} within "
                         f"{durations.format(c.window)}, ttl {ttl} -> {state}{extra}{note}")
    for w in ex.widened:
        r = w["rule"]
        unit = f" (counted per /{r['unit_prefixlen']})" if r["unit_prefixlen"] else ""
        lines.append(f"widened: {w['netblock']} holds {len(w['offenders'])} offenders, "
                     f"rule {r['family']} /{r['prefixlen']} at {r['min_count']}{unit}")
        if w.get("fallback"):
            lines.append(f"  falls back to its offenders: with the protected addresses inside it cut out it "
                         f"would take more than {w['max_elements']} kernel elements "
                         "([policy] max_elements_per_block), so each offender is blocked on its own")
    if ex.routed:
        from netblock.decide.routed import render as render_routed

        for r in ex.routed:
            lines += render_routed(r)
    for b in ex.blocks:
        until = "permanent" if b.expires is None else f"until {b.expires:%Y-%m-%d %H:%M:%S}Z"
        lines.append(f"block: {b.netblock} [{b.source}] {b.reason}, {until}")
    for kind, n in ex.protected:
        lines.append(f"protected: {n} ({kind})")
    for n, limit in ex.left_out:
        lines.append(f"left out: {n} would take more than {limit} kernel elements with the protected "
                     "addresses inside it cut out; it falls back to its offenders, each blocked on its own")
    for n, by in ex.overridden:
        lines.append(f"not protected: {n} delivered mail recently, but {by} was blocked by hand "
                     "and a manual block wins over that protection")
    return lines
