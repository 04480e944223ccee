"""`netblock why`: what the policy makes of an address or prefix, and why.

``explain()`` gathers the observations, each class's rule and whether it
fired, the widening and the announced prefixes that cover the target, the
blocks that hold it and what protects it, and a one-line verdict;
``render()`` turns that into the lines `why` prints. It computes with the
policy's own steps (decide/policy.py), so the answer is what a tick would do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable

from netaddr import IPAddress, IPNetwork

from netblock import durations
from netblock.aggregate import widen_detail
from netblock.decide import policy
from netblock.decide.protect import Protection, overlap, protection
from netblock.model import MANUAL_SOURCES, NOT_OFFENCES, Block, Observation, host_mask


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
    rules = policy.class_rules(config)
    ws = policy.widen_settings(config)
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
    limit = policy.budget(config)
    left_out = [b for b in blocks if b.source == policy.SOURCE and b.netblock.size > 1
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
        rule = policy.rule_for(rules, o.cls)
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


def _routed_for(store, rules, config, now, sh: Protection, net: IPNetwork) -> list[dict]:
    """The routed candidates ``why`` shows: blocked ones overlapping ``net``, refused ones holding it."""
    from netblock.decide import routed

    given = policy.routed_input(store, rules, config, now, sh)
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


def _widening_for(store, rules, config, now, sh, net: IPNetwork, ws: policy.WidenSettings) -> list[dict]:
    names = [n for n, r in rules.items() if r.widen]
    if not ws.enabled or not ws.rules or not names:
        return []
    offenders = {o.ip for o in policy.find_offences(store, rules, now, sh, only=names, window=ws.window)}
    limit = policy.budget(config)
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
