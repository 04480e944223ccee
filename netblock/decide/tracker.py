"""The event path's memory of recent offences: a threshold crossing seen as its line is read.

The daemon's Runner (netblock/run/tick.py) feeds every new offence to a
Tracker between ticks; what crosses goes to the kernel at once, and the tick's full
policy.decide() stays the reference that catches up on anything missed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable

from netaddr import IPAddress, IPNetwork

from netblock import durations
from netblock.aggregate import widen_detail
from netblock.decide import policy, protect
from netblock.decide.manual import later
from netblock.model import NOT_OFFENCES, Block, Observation

MAX_TRACKED = 200_000  # addresses the event path remembers offences of (~160 MB at most)


def newly_crossing(store, config, ips: Iterable[IPAddress], now: datetime) -> bool:
    """Whether one of ``ips`` is over a threshold without an active block: worth a sync now."""
    rules = policy.class_rules(config)
    if not rules:
        return False
    longest = max(r.window for r in rules.values())
    for ip in set(ips):
        block = store.get_block(IPNetwork(ip))
        if block is not None and (block.expires is None or block.expires > now):
            continue
        counts: dict[str, int] = {}
        for o in store.observations(since=now - longest, ip=ip):
            rule = policy.rule_for(rules, o.cls)
            if rule is not None and rule.threshold > 0 and o.time >= now - rule.window:
                counts[rule.name] = counts.get(rule.name, 0) + 1
                if counts[rule.name] >= rule.threshold:
                    return True
    return False


class Tracker:
    """The offences of recent minutes in memory, so a threshold crossing is seen as its line is read.

    Asking the store instead means a scan of the window per look (it keeps
    no index on the address, on purpose) and policy.decide() over every
    offender: both grow with the size of a storm, while what has to be done
    per new line does not. The tracker applies the same rules as
    policy.decide() to the addresses it saw offend, and only to them; the
    tick's full decision stays the reference and catches up on anything
    missed here (the clock moving on, a reload, a failed store write).

    Seeded from the store at start, so offences from before a restart count.
    At most ``limit`` addresses are kept (about 0.8 kB each): past that, the
    first seen is forgotten, and a crossing of its is left to the tick.
    """

    def __init__(self, config, store=None, now: datetime | None = None, *, limit: int = MAX_TRACKED):
        self.limit = limit
        self.rules = policy.class_rules(config)
        self.widening = policy.widen_settings(config)
        self.budget = policy.budget(config)
        widen_names = [n for n, r in self.rules.items() if r.widen]
        self.widens = bool(self.widening.enabled and self.widening.rules and widen_names)
        self.keep = max([r.window for r in self.rules.values()]
                        + ([self.widening.window] if self.widens else []), default=timedelta(0))
        # ip -> rule name -> [(time, class)], oldest first
        self.recent: dict[IPAddress, dict[str, list[tuple[datetime, str]]]] = {}
        self.pending: set[IPAddress] = set()  # over a threshold since the last decide()
        self.pending_widen: set[IPAddress] = set()  # became widening offenders since the last decide()
        # widening offenders (as of when they became one), by the widest rule's prefix around them
        self._neighbourhoods: dict[tuple[int, int], set[IPAddress]] = {}
        self._widest = {fam: min((r.prefixlen for r in self.widening.rules if r.family == fam), default=None)
                        for fam in (4, 6)}
        if store is not None and now is not None and self.rules:
            self.feed(o for o in store.observations(since=now - self.keep) if o.cls not in NOT_OFFENCES)
            if self.widens:
                self._note_widening(protect.protection(store, config, now), now)
            self.settled(now)

    def feed(self, offences: Iterable[Observation]) -> None:
        for o in offences:
            rule = policy.rule_for(self.rules, o.cls)
            if rule is None:
                continue
            per_rule = self.recent.get(o.ip)
            if per_rule is None:
                if len(self.recent) >= self.limit:
                    self._evict()
                per_rule = self.recent[o.ip] = {}
            seen = per_rule.setdefault(rule.name, [])
            seen.append((o.time, o.cls))
            if len(seen) > 1 and o.time < seen[-2][0]:
                seen.sort(key=lambda e: e[0])  # a late line from another log
            if 0 < rule.threshold <= len(seen):  # maybe over it: decide() counts within the window
                self.pending.add(o.ip)
            if self.widens and rule.widen:
                self.pending_widen.add(o.ip)

    def _evict(self) -> None:
        """Forget the address seen first: memory stays bounded in a storm; the tick still decides on it."""
        oldest = next(iter(self.recent))
        del self.recent[oldest]
        self.pending.discard(oldest)
        self.pending_widen.discard(oldest)
        self._forget_offender(oldest)

    def settled(self, now: datetime) -> None:
        """Forget what is pending (a full decision just covered it) and offences older than any window."""
        self.pending.clear()
        self.pending_widen.clear()
        cutoff = now - self.keep
        for ip in list(self.recent):
            per_rule = self.recent[ip]
            for name in list(per_rule):
                kept = [e for e in per_rule[name] if e[0] >= cutoff]
                if kept:
                    per_rule[name] = kept
                else:
                    del per_rule[name]
            if not per_rule:
                del self.recent[ip]
            if not any(self.rules[name].widen for name in per_rule):
                self._forget_offender(ip)

    def _offence(self, ip: IPAddress, rule: policy.ClassRule, now: datetime,
                 window: timedelta) -> policy.Offence | None:
        since = now - window
        seen = [e for e in self.recent.get(ip, {}).get(rule.name, ()) if e[0] >= since]
        if not seen or len(seen) < max(rule.threshold, 1):
            return None
        return policy.Offence(ip, tuple(sorted({c for _t, c in seen})), len(seen), seen[-1][0], rule)

    def _key(self, ip: IPAddress) -> tuple[int, int] | None:
        plen = self._widest.get(ip.version)
        if plen is None:
            return None
        bits = 32 if ip.version == 4 else 128
        return ip.version, ip.value >> (bits - plen)

    def _forget_offender(self, ip: IPAddress) -> None:
        key = self._key(ip)
        if key is not None and key in self._neighbourhoods:
            self._neighbourhoods[key].discard(ip)
            if not self._neighbourhoods[key]:
                del self._neighbourhoods[key]

    def decide(self, store, config, now: datetime) -> list[Block]:
        """Blocks for what is pending that the store does not already hold active (as policy.decide() words them)."""
        if not self.pending and not self.pending_widen:
            return []
        shield = protect.protection(store, config, now)
        decided: dict[IPNetwork, Block] = {}
        for ip in self.pending:
            for name in self.recent.get(ip, ()):
                rule = self.rules[name]
                if rule.threshold <= 0:
                    continue
                off = self._offence(ip, rule, now, rule.window)
                if off is None or (off.expires is not None and off.expires <= now):
                    continue
                net = IPNetwork(ip)
                old = decided.get(net)
                if old is not None and (old.expires is None or (off.expires is not None
                                                                 and off.expires <= old.expires)):
                    continue
                if shield.covers(ip):
                    break
                reason = (f"{off.count} {off.label} within {durations.format(rule.window)} "
                          f"(threshold {rule.threshold})")
                decided[net] = Block(net, reason, policy.SOURCE, now, off.expires)
        if self.widens:
            for block in self._widened(store, shield, now):
                decided.setdefault(block.netblock, block)
        self.pending.clear()
        self.pending_widen.clear()
        out = []
        for net, block in decided.items():
            old = store.get_block(net)
            if old is not None and (old.expires is None or old.expires > now):
                continue  # active already: extending it is the tick's business
            out.append(block)
        return sorted(out, key=lambda b: (b.netblock.version, b.netblock.first, b.netblock.prefixlen))

    def _widening_expiry(self, ip: IPAddress, now: datetime) -> tuple[bool, datetime | None]:
        """(ip is a widening offender, the latest expiry of its offences)."""
        found, expires = False, None
        for rule in self.rules.values():
            if not rule.widen:
                continue
            off = self._offence(ip, rule, now, self.widening.window)
            if off is None:
                continue
            expires = off.expires if not found else later(expires, off.expires)
            found = True
        return found, expires

    def _note_widening(self, shield: protect.Protection, now: datetime) -> dict[tuple[int, int], set[IPAddress]]:
        """Put the pending addresses that are widening offenders into their neighbourhoods: {key: those new}."""
        touched: dict[tuple[int, int], set[IPAddress]] = {}
        for ip in self.pending_widen:
            key = self._key(ip)
            if key is None or shield.covers(ip) or not self._widening_expiry(ip, now)[0]:
                continue
            self._neighbourhoods.setdefault(key, set()).add(ip)
            touched.setdefault(key, set()).add(ip)
        return touched

    def _widened(self, store, shield: protect.Protection, now: datetime) -> list[Block]:
        """Widened prefixes around the addresses that just became widening offenders.

        Only their neighbourhood (the widest rule's prefix around each) is
        looked at, a prefix elsewhere cannot have changed; and a prefix the
        store already holds active is left to the tick, so a storm inside a
        widened /16 costs a lookup per react, not a pass over its offenders.
        """
        out = []
        for key, new in self._note_widening(shield, now).items():
            found = widen_detail(list(self._neighbourhoods[key]), self.widening.rules, self.widening.max_prefixlen)
            found.sort(key=lambda w: w.netblock.prefixlen)
            kept: list = []
            for w in found:
                if not any(k.netblock.first <= w.netblock.first and w.netblock.last <= k.netblock.last for k in kept):
                    kept.append(w)
            for w in kept:
                if not any(ip in w.netblock for ip in new):
                    continue  # unchanged since it was decided
                old = store.get_block(w.netblock)
                if old is not None and (old.expires is None or old.expires > now):
                    continue
                ends = [self._widening_expiry(ip, now)[1] for ip in w.offenders]
                known = [e for e in ends if e is not None]
                expires = max(known) if len(known) == len(ends) else None
                if expires is not None and expires <= now:
                    continue
                block = Block(w.netblock, f"widened: {len(w.offenders)} offenders in {w.netblock}",
                              policy.SOURCE, now, expires)
                out += policy.within_budget(block, zip(w.offenders, ends), shield, self.budget, now)
        return out
