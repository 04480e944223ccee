"""Pair the two halves of an accepted message, and count ambiguous lines.

No single line of Postfix or sendmail proves that a client delivered mail.
smtpd's "QUEUEID: client=NAME[IP]" comes at the first accepted RCPT, before
DATA; sendmail's "QUEUEID: from=..., relay=HOST" also when the client quits
or is rejected at the end of DATA.  The proof comes later, on another line
with the same queue ID and no address: qmgr's "QUEUEID: from=<...>, size=N,
nrcpt=N (queue active)" (cleanup committed the message: smtpd answered 250),
sendmail's "QUEUEID: to=..., stat=Sent|queued|Deferred" (a delivery attempt
of a queued message).  A cleanup or milter reject, or a lost connection after
DATA, never writes that second line.

The parsers mark the halves (fields.CLIENT + ID with the address,
fields.ACCEPTED + ID without); `Join` remembers the first by (mta, ID) and
turns the second into a "delivered" observation at its time and position.
Memory is bounded: at most `limit` open transactions, each forgotten `ttl`
after its client line (by the lines' own times).  `dump`/`load` carry the
open ones across runs (the daemon keeps them in the store with its log
positions), so a rotation or a restart between the two lines loses nothing.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import datetime, timedelta, timezone

from netaddr import AddrFormatError, IPAddress

from .fields import ACCEPTED, AMBIGUOUS, CLIENT, MARK

STATE_KEY = "join:pending"
LIMIT = 10_000
TTL = timedelta(hours=1)  # smtpd's timeouts end a DATA phase long before; qmgr takes a new message at once
_CLIENT_LEN, _ACCEPTED_LEN = len(CLIENT), len(ACCEPTED)


class Join:
    """Open message transactions by (mta, queue ID), oldest first."""

    def __init__(self, *, limit: int = LIMIT, ttl: timedelta = TTL):
        self.limit = limit
        self.ttl = ttl
        self.open: OrderedDict[tuple[str, str], tuple[datetime, IPAddress]] = OrderedDict()
        self.ambiguous = 0
        self.changed = False

    def mark(self, time: datetime, ip, cls: str, mta: str) -> IPAddress | None:
        """Take one marker; the address that delivered when it completes a transaction."""
        if cls.startswith(CLIENT):
            key = (mta, cls[_CLIENT_LEN:])
            self.open.pop(key, None)  # a queue ID is reused later: the newest client owns it
            self.open[key] = (time, ip)
            self.changed = True
            self._expire(time)
            return None
        if cls.startswith(ACCEPTED):
            found = self.open.pop((mta, cls[_ACCEPTED_LEN:]), None)
            if found is None:
                return None
            self.changed = True
            if time - found[0] > self.ttl:
                return None
            return found[1]
        if cls == AMBIGUOUS:
            self.ambiguous += 1
        return None

    def _expire(self, now: datetime) -> None:
        while len(self.open) > self.limit:
            self.open.popitem(last=False)
        edge = now - self.ttl
        while self.open:
            key, (when, _ip) = next(iter(self.open.items()))
            if when >= edge:
                break
            del self.open[key]

    def tuples(self, hits: list[tuple]) -> list[tuple]:
        """sources.batch tuples (time, ip, cls, mta, start) with the markers settled."""
        out = []
        for hit in hits:
            cls = hit[2]
            if cls[0] != MARK:
                out.append(hit)
                continue
            ip = self.mark(hit[0], hit[1], cls, hit[3])
            if ip is not None:
                out.append((hit[0], ip, "delivered", hit[3], hit[4]))
        return out

    def observations(self, obs: list) -> list:
        """Observations (from parse_line/parse_message with marks=True) with the markers settled."""
        from netblock.model import Observation

        out = []
        for o in obs:
            if o.cls[0] != MARK:
                out.append(o)
                continue
            ip = self.mark(o.time, o.ip, o.cls, o.mta)
            if ip is not None:
                out.append(Observation(o.time, ip, "delivered", o.mta, o.source, o.position))
        return out

    def dump(self) -> str:
        """The open transactions as JSON (for the store's state table)."""
        self.changed = False
        return json.dumps([[mta, qid, when.timestamp(), str(ip)] for (mta, qid), (when, ip) in self.open.items()])

    def load(self, text: str | None) -> None:
        """Open transactions from dump(); anything unreadable is dropped (it only delays a proof)."""
        self.open.clear()
        try:
            rows = json.loads(text) if text else []
            for mta, qid, stamp, ip in rows[-self.limit:]:
                self.open[(str(mta), str(qid))] = (datetime.fromtimestamp(float(stamp), timezone.utc), IPAddress(ip))
        except (ValueError, TypeError, OverflowError, AddrFormatError):
            self.open.clear()
        self.changed = False
