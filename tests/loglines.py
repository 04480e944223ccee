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


def dnsbl_message(ip: str) -> str:
    return (f"NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 Service unavailable; Client host [{ip}] "
            f"blocked using zen.example; from=<a@b.example> to=<c@d.example> proto=ESMTP helo=<x>")


def no_rdns_message(ip: str, helo: str = "x") -> str:
    return (f"NOQUEUE: reject: RCPT from unknown[{ip}]: 450 4.7.1 Client host rejected: cannot find your "
            f"hostname, [{ip}]; from=<a@b.example> to=<c@d.example> proto=ESMTP helo=<{helo}>")


def dnsbl_reject(ip: str, when: str) -> str:
    """A whole syslog line: smtpd refused ``ip`` because a DNSBL lists it."""
    return f"{when} mx postfix/smtpd[42]: {dnsbl_message(ip)}"


def no_rdns_reject(ip: str, when: str, helo: str = "x") -> str:
    return f"{when} mx postfix/smtpd[42]: {no_rdns_message(ip, helo)}"
