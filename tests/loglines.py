"""Mail log lines the tests feed netblock, written once: a Postfix DNSBL reject, a no-rDNS reject, a delivery.

``when`` is the ISO-8601 stamp that starts an RFC 5424-style syslog line (what
``rsyslog`` writes with the high-precision template); the ``*_message``
builders are the part after ``postfix/smtpd[PID]: `` (what the journal's
MESSAGE field holds).
"""

from __future__ import annotations

from datetime import datetime, timezone


def now_stamp() -> str:
    """The real clock as a log stamp, for tests against a daemon that reads what happens now."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def dnsbl_message(ip: str, zone: str = "zen.example") -> str:
    return (f"NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 Service unavailable; Client host [{ip}] "
            f"blocked using {zone}; from=<a@b.example> to=<c@d.example> proto=ESMTP helo=<x>")


def no_rdns_message(ip: str, helo: str = "x") -> str:
    return (f"NOQUEUE: reject: RCPT from unknown[{ip}]: 450 4.7.1 Client host rejected: cannot find your "
            f"hostname, [{ip}]; from=<a@b.example> to=<c@d.example> proto=ESMTP helo=<{helo}>")


def dnsbl_reject(ip: str, when: str | None = None, zone: str = "zen.example") -> str:
    """A whole syslog line: smtpd refused ``ip`` because the DNSBL ``zone`` lists it (``when``: now)."""
    return f"{when or now_stamp()} mx postfix/smtpd[42]: {dnsbl_message(ip, zone)}"


def no_rdns_reject(ip: str, when: str, helo: str = "x") -> str:
    return f"{when} mx postfix/smtpd[42]: {no_rdns_message(ip, helo)}"


def delivery(ip: str, when: str | None = None, accepted: str | None = None, host: str = "relay.example") -> str:
    """Two lines: smtpd's client= and qmgr's proof that the message was accepted (sources/join.py
    pairs them into a "delivered" observation); ``when`` and ``accepted`` default to now."""
    return (f"{when or now_stamp()} mx postfix/smtpd[42]: 4AB12C3D4E: client={host}[{ip}]\n"
            f"{accepted or when or now_stamp()} mx postfix/qmgr[43]: 4AB12C3D4E: from=<a@{host}>, size=1234, "
            f"nrcpt=1 (queue active)")
