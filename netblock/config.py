"""The configuration file: TOML, every setting optional, every mistake named.

A site needs no file at all: each setting has a default that fits a
university mail server. A file only says what differs, and ``dump`` prints
the effective result as TOML that ``load`` reads back unchanged, so
``netblock config > netblock.toml`` is a valid starting point.

The file is checked strictly: an unknown key, a wrong type or an
out-of-range value is refused with one line naming ``[section] key``,
because a typo in a firewall tool's config silently falling back to a
default is how a site ends up blocking nothing (or everything).

Why this module is long: the whole schema (every section, key, default and
check) is one table that --help, the shipped file and the cross-section checks
read.
"""

from __future__ import annotations

import math
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from netblock import durations
from netblock.aggregate import DEFAULT_WIDEN, WidenRule
from netblock.decide.targets import parse_target
from netblock.errors import BadInput, ConfigError
from netblock.firewall import BACKENDS, VERDICTS, Settings
from netblock.limits import DEFAULT_MAX_ELEMENTS_PER_BLOCK, MIN_PREFIXLEN

DEFAULT_PATH = "/etc/netblock/netblock.toml"


_UNSET = object()


class _Bad(Exception):
    """A value that does not fit.

    ``expected`` completes "expected ..."; ``sub`` locates the culprit inside a
    list or table (``[2]``, ``.family``) and ``value`` is that culprit, so the
    message shows the one wrong item rather than the whole list. ``reason``
    replaces the "expected ..., got ..." phrase when there is no value to show.
    """

    def __init__(self, expected: str = "", *, sub: str = "", value: Any = _UNSET, reason: str = ""):
        super().__init__(expected)
        self.expected = expected
        self.sub = sub
        self.value = value
        self.reason = reason

    def inside(self, sub: str, value: Any) -> "_Bad":
        """The same complaint, located one level further out."""
        return _Bad(
            self.expected, sub=sub + self.sub,
            value=value if self.value is _UNSET else self.value, reason=self.reason,
        )

    def message(self, value: Any) -> str:
        if self.reason:
            return self.reason
        return f"expected {self.expected}, got {_show(value if self.value is _UNSET else self.value)}"


# -- durations -------------------------------------------------------------------

def _duration(text: Any) -> timedelta:
    """``50ms``, ``30s``, ``5m``, ``1h``, ``7d``, ``2w``, or combined largest first: ``1d12h``."""
    try:
        value = durations.parse(text, milliseconds=True)
    except OverflowError:
        raise _Bad("a duration shorter than 999999999 days") from None
    if value is None:
        raise _Bad('a duration like "7d"')
    return value


def _format_duration(value: timedelta) -> str:
    return durations.format(value, zero="0d")


# -- value kinds: parse from TOML, dump back to TOML ---------------------------------


@dataclass(frozen=True)
class _Kind:
    parse: Callable[[Any], Any]
    dump: Callable[[Any], Any] = lambda v: v


def _str(allow_empty: bool = True) -> _Kind:
    def parse(v: Any) -> str:
        if not isinstance(v, str):
            raise _Bad("a string")
        if not v and not allow_empty:
            raise _Bad("a non-empty string")
        return v

    return _Kind(parse)


def _bool() -> _Kind:
    def parse(v: Any) -> bool:
        if not isinstance(v, bool):
            raise _Bad("true or false")
        return v

    return _Kind(parse)


def _int(lo: int, hi: int | None = None) -> _Kind:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad("an integer")
        if v < lo or (hi is not None and v > hi):
            raise _Bad(f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}")
        return v

    return _Kind(parse)


def _float(lo: float, hi: float | None = None) -> _Kind:
    def parse(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _Bad("a number")
        if v < lo or (hi is not None and v > hi):
            raise _Bad(f"a number from {lo} to {hi}" if hi is not None else f"a number >= {lo}")
        return float(v)

    return _Kind(parse)


def _enum(*choices: str) -> _Kind:
    def parse(v: Any) -> str:
        if v not in choices or not isinstance(v, str):
            raise _Bad("one of " + ", ".join(f'"{c}"' for c in choices))
        return v

    return _Kind(parse)


def _dur(minimum: timedelta = timedelta(milliseconds=1)) -> _Kind:
    def parse(v: Any) -> timedelta:
        d = _duration(v)
        if d < minimum:
            raise _Bad(f"a duration of at least {_format_duration(minimum)}")
        return d

    return _Kind(parse, _format_duration)


def _list(item: _Kind, *, non_empty: bool = False, unique: bool = False) -> _Kind:
    def parse(v: Any) -> tuple:
        if not isinstance(v, list):
            raise _Bad("a list")
        if non_empty and not v:
            raise _Bad("a non-empty list")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item.parse(x))
            except _Bad as e:
                raise e.inside(f"[{i}]", x) from None
        if unique and len(set(out)) != len(out):
            raise _Bad("a list without repeats")
        return tuple(out)

    return _Kind(parse, lambda v: [item.dump(x) for x in v])


def _cidr(v: Any) -> str:
    """Canonical CIDR text; host bits are cleared like everywhere else in netblock.

    Parsed as strictly as `netblock allow add` parses (any width but /0): left
    to netaddr, ``10.1/16`` would be 10.1.0.0/16 with netaddr 0.8 (Debian 12)
    and an error with 1.x.
    """
    if not isinstance(v, str):
        raise _Bad("a CIDR string")
    try:
        return str(parse_target(v, force=True).netblock)
    except BadInput:
        raise _Bad('a CIDR like "192.0.2.0/24"') from None


def _listen(v: Any) -> str:
    """``host:port`` or ``[v6]:port``; empty turns the listener off."""
    if not isinstance(v, str):
        raise _Bad('an address like "127.0.0.1:9425"')
    if v == "":
        return v
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]:\s]+):([0-9]{1,5})", v)
    if m is None or not 0 < int(m[2]) < 65536:
        raise _Bad('an address like "127.0.0.1:9425"')
    return v


# -- sections ---------------------------------------------------------------------


def _k(kind: _Kind, default: Any = None, *, factory: Callable[[], Any] | None = None):
    if factory is not None:
        return field(default_factory=factory, metadata={"kind": kind})
    return field(default=default, metadata={"kind": kind})


@dataclass(frozen=True)
class FirewallConfig:
    ports: tuple[int, ...] = _k(_list(_int(1, 65535), non_empty=True, unique=True), (25,))
    families: tuple[str, ...] = _k(
        _list(_enum("ipv4", "ipv6"), non_empty=True, unique=True), ("ipv4", "ipv6")
    )
    verdict: str = _k(_enum(*VERDICTS), "drop")
    hook: str = _k(_enum("input", "prerouting"), "input")
    ipset_maxelem: int = _k(_int(1, 2**31 - 1), 1_048_576)


@dataclass(frozen=True)
class BlocksConfig:
    default_ttl: timedelta = _k(_dur(timedelta(seconds=1)), timedelta(days=7))
    max_ttl: timedelta = _k(_dur(timedelta(seconds=1)), timedelta(days=90))
    reblock_factor: float = _k(_float(1.0, 1000.0), 2.0)
    max_prefix_v4: int = _k(_int(MIN_PREFIXLEN[4], 32), 8)
    max_prefix_v6: int = _k(_int(MIN_PREFIXLEN[6], 128), 32)
    allow: tuple[str, ...] = _k(_list(_Kind(_cidr)), ())


_RULE_KEYS = "family, prefixlen, min_count and optionally unit_prefixlen"


def _widen_rule(v: Any) -> WidenRule:
    if not isinstance(v, dict):
        raise _Bad("a table like {family = 4, prefixlen = 24, min_count = 4}")
    for key in v:
        if key not in ("family", "prefixlen", "min_count", "unit_prefixlen"):
            raise _Bad(sub=f".{key}", reason=f"unknown setting (a rule has {_RULE_KEYS})")
    for key in ("family", "prefixlen", "min_count"):
        if key not in v:
            raise _Bad(sub=f".{key}", reason=f"missing (a rule has {_RULE_KEYS})")

    def get(key: str, kind: _Kind) -> Any:
        try:
            return kind.parse(v[key])
        except _Bad as e:
            raise e.inside(f".{key}", v[key]) from None

    family = get("family", _Kind(_family))
    bits = 32 if family == 4 else 128
    prefixlen = get("prefixlen", _int(1, bits))
    min_count = get("min_count", _int(1))
    unit = get("unit_prefixlen", _int(prefixlen + 1, bits)) if "unit_prefixlen" in v else None
    return WidenRule(family, prefixlen, min_count, unit)


def _family(v: Any) -> int:
    if isinstance(v, bool) or v not in (4, 6):
        raise _Bad("4 or 6")
    return v


def _widen_rules(v: Any) -> tuple[WidenRule, ...]:
    if not isinstance(v, list):
        raise _Bad("a list of tables like {family=4, prefixlen=24, min_count=4}")
    rules = []
    for i, item in enumerate(v):
        try:
            rules.append(_widen_rule(item))
        except _Bad as e:
            raise e.inside(f"[{i}]", item) from None
    return tuple(rules)


def _dump_widen_rule(r: WidenRule) -> dict:
    d = {"family": r.family, "prefixlen": r.prefixlen, "min_count": r.min_count}
    if r.unit_prefixlen is not None:
        d["unit_prefixlen"] = r.unit_prefixlen
    return d


@dataclass(frozen=True)
class WidenConfig:
    enabled: bool = _k(_bool(), True)
    rules: tuple[WidenRule, ...] = _k(
        _Kind(_widen_rules, lambda v: [_dump_widen_rule(r) for r in v]), DEFAULT_WIDEN
    )
    window: timedelta = _k(_dur(timedelta(seconds=1)), timedelta(days=1))
    max_prefix_v4: int = _k(_int(MIN_PREFIXLEN[4], 32), 16)
    max_prefix_v6: int = _k(_int(MIN_PREFIXLEN[6], 128), 48)


# -- [routed]: widening to announced prefixes (netblock/decide/routed.py explains the defaults) --

# Webmail and mail-service providers' ASes (names as in pyasn's asnames.json):
# a site exchanges real mail with them, so their networks are never widened to.
DEFAULT_DO_NOT_WIDEN = (
    15169,  # GOOGLE
    8075, 8068, 8069,  # MICROSOFT-CORP-MSN-AS-BLOCK (Outlook.com, Exchange Online)
    36647, 10310, 26101, 34010,  # YAHOO-GQ1, YAHOO-1, YAHOO-3, YAHOO-IRD
    714, 6185,  # APPLE-ENGINEERING, APPLE-AUSTIN (iCloud mail)
    16509, 14618,  # AMAZON-02, AMAZON-AES (Amazon SES)
    11377,  # SENDGRID
    14782,  # THEROCKETSCIENCEGROUP (Mailchimp, Mandrill)
    22843, 26211, 52129,  # PROOFPOINT
    13238,  # YANDEX
    47764,  # MAILRU-AS
    8560,  # ONEANDONE-AS (1&1, GMX, web.de)
    2639,  # ZOHO-AS
    32934,  # FACEBOOK
)


@dataclass(frozen=True)
class RoutedConfig:
    """Off by default: it needs ``[report] asn_file``, and it is the widest widening there is."""

    enabled: bool = _k(_bool(), False)
    min_offenders: int = _k(_int(2), 16)
    min_spread: int = _k(_int(1), 8)
    window: timedelta = _k(_dur(timedelta(seconds=1)), timedelta(days=1))
    max_prefix_v4: int = _k(_int(8, 32), 12)
    max_prefix_v6: int = _k(_int(19, 128), 32)
    do_not_widen: tuple[int, ...] = _k(_list(_int(0, 2**32 - 1), unique=True), DEFAULT_DO_NOT_WIDEN)


@dataclass(frozen=True)
class ClassPolicy:
    """When observations of one class turn an address into a block."""

    threshold: int = _k(_int(1))
    window: timedelta = _k(_dur(timedelta(seconds=1)))
    ttl: timedelta = _k(_dur(timedelta(seconds=1)))
    widen: bool = _k(_bool())


_HOUR, _DAY = timedelta(hours=1), timedelta(days=1)

DEFAULT_CLASSES = {
    "dnsbl": ClassPolicy(3, _HOUR, _DAY, True),
    "bad-helo": ClassPolicy(3, _HOUR, _DAY, True),
    "no-rdns": ClassPolicy(5, _HOUR, _DAY, True),
    "dynamic": ClassPolicy(5, _HOUR, _DAY, True),
    "unknown-user": ClassPolicy(10, _HOUR, _DAY, True),
    "relay-denied": ClassPolicy(5, _HOUR, _DAY, False),
    "auth-failed": ClassPolicy(10, _HOUR, _DAY, False),
    "protocol": ClassPolicy(10, _HOUR, timedelta(hours=12), False),
    "pregreet": ClassPolicy(2, _HOUR, _DAY, True),
    "lost-connection": ClassPolicy(30, _HOUR, timedelta(hours=6), False),
}


@dataclass(frozen=True)
class PolicyConfig:
    window: timedelta = _k(_dur(timedelta(seconds=1)), _HOUR)
    delivered_window: timedelta = _k(_dur(timedelta(seconds=1)), timedelta(days=30))
    # What one decided block may cost in kernel elements once protected space is cut out of it.
    max_elements_per_block: int = _k(_int(1, 1_000_000), DEFAULT_MAX_ELEMENTS_PER_BLOCK)
    # Read and written by _policy_section: a table of tables, merged by name.
    classes: dict[str, ClassPolicy] = field(default_factory=lambda: dict(DEFAULT_CLASSES))

    def class_policy(self, cls: str) -> ClassPolicy | None:
        """The policy of an observation class; ``dnsbl:ZONE`` falls back to ``dnsbl``."""
        found = self.classes.get(cls)
        if found is None and ":" in cls:
            found = self.classes.get(cls.split(":", 1)[0])
        return found


def _journal_setting(v: Any) -> bool | str:
    if isinstance(v, bool) or v == "auto":
        return v
    raise _Bad('true, false or "auto"')


@dataclass(frozen=True)
class SourcesConfig:
    files: tuple[str, ...] = _k(_list(_str(allow_empty=False)), ())
    format: str = _k(_enum("auto", "postfix", "exim", "sendmail"), "auto")
    # "auto": the journal where the MTA logs to it (entries of journal_units in the last
    # day) and no files are configured; true/false force it (netblock/sources/journal.py: choose()).
    journal: bool | str = _k(_Kind(_journal_setting), "auto")
    journal_units: tuple[str, ...] = _k(
        _list(_str(allow_empty=False)),
        ("postfix.service", "postfix@-.service", "exim4.service", "sendmail.service"),
    )
    max_line: int = _k(_int(256, 1 << 24), 8192)
    own_names: tuple[str, ...] = _k(_list(_str(allow_empty=False)), ())


@dataclass(frozen=True)
class DaemonConfig:
    tick: timedelta = _k(_dur(timedelta(seconds=1)), timedelta(seconds=30))
    coalesce: timedelta = _k(_dur(timedelta(0)), timedelta(milliseconds=50))
    observation_retention: timedelta = _k(_dur(timedelta(seconds=1)), timedelta(days=30))
    # Counters are read every sample_every (and always right before an element goes); a tick with
    # nothing new skips the full sync while the ruleset generation proves the kernel unchanged, at
    # most for reconcile_every.
    sample_every: timedelta = _k(_dur(timedelta(seconds=1)), timedelta(minutes=5))
    reconcile_every: timedelta = _k(_dur(timedelta(seconds=1)), timedelta(minutes=30))
    # Fleet mode: where observations wait while PostgreSQL is unreachable. On
    # disk under the state directory, so a reboot during an outage keeps them.
    spool: str = _k(_str(allow_empty=False), "/var/lib/netblock/spool.db")
    # What the daemon writes to stderr (the journal): start, sources, each decision, expiries,
    # drift, store outages at info; debug adds each sync; `netblock daemon -v` goes one lower.
    log_level: str = _k(_enum("debug", "info", "warning", "error"), "info")


@dataclass(frozen=True)
class ReportConfig:
    top: int = _k(_int(1, 100_000), 10)
    retention: timedelta = _k(_dur(timedelta(seconds=1)), timedelta(days=400))
    asn_file: str = _k(_str(), "")
    as_names_file: str = _k(_str(), "")
    storm_factor: float = _k(_float(1.0, 1_000_000.0), 2.0)


@dataclass(frozen=True)
class ExportConfig:
    listen: str = _k(_Kind(_listen), "127.0.0.1:9425")
    textfile: str = _k(_str(), "")


_SECTIONS = {
    "firewall": FirewallConfig,
    "blocks": BlocksConfig,
    "widen": WidenConfig,
    "routed": RoutedConfig,
    "policy": PolicyConfig,
    "sources": SourcesConfig,
    "daemon": DaemonConfig,
    "report": ReportConfig,
    "export": ExportConfig,
}


@dataclass(frozen=True)
class Config:
    db: str = _k(_str(allow_empty=False), "/var/lib/netblock/netblock.db")
    backend: str = _k(_enum(*BACKENDS), "nftables")
    lock_file: str = _k(_str(allow_empty=False), "/run/netblock/netblock.lock")
    host_id: str = _k(_str(allow_empty=False), factory=socket.gethostname)
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    blocks: BlocksConfig = field(default_factory=BlocksConfig)
    widen: WidenConfig = field(default_factory=WidenConfig)
    routed: RoutedConfig = field(default_factory=RoutedConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def firewall_settings(self) -> Settings:
        fw = self.firewall
        return Settings(
            ports=fw.ports, families=fw.families, verdict=fw.verdict, hook=fw.hook,
            maxelem=fw.ipset_maxelem,
        )


def with_verdict(cfg: Config, verdict: str) -> Config:
    """``cfg`` with another ``[firewall] verdict`` (``--count-only``)."""
    return replace(cfg, firewall=replace(cfg.firewall, verdict=verdict))


# -- loading ----------------------------------------------------------------------


def load(path: str | Path | None = None, *, explicit: bool = False) -> Config:
    """Read the config file; a missing default file means all defaults.

    ``explicit`` says the user named the file (``--config``), so its absence
    is an error rather than "use the defaults".
    """
    if path is None:
        path = DEFAULT_PATH
    name = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{name}: no such file") from None
        return Config()
    except OSError as e:
        raise ConfigError(f"{name}: cannot read: {e.strerror or e}") from None
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{name}: invalid TOML: {e}") from None
    return from_dict(table, name=name)


def loads(text: str, *, name: str = "netblock.toml") -> Config:
    """Parse config text (what ``load`` does after reading the file)."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{name}: invalid TOML: {e}") from None
    return from_dict(table, name=name)


def from_dict(table: dict, *, name: str = "netblock.toml") -> Config:
    top = {}
    for key, value in table.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: [{key}]: expected a table, got {_show(value)}")
            if key == "policy":
                top[key] = _policy_section(value, name)
            else:
                top[key] = _section(_SECTIONS[key], value, name, f"[{key}] ")
        else:
            top[key] = value
    cfg = _section(Config, top, name, "", sections=set(_SECTIONS))
    if cfg.routed.enabled and not cfg.report.asn_file:
        raise ConfigError(f"{name}: [routed] enabled: needs [report] asn_file (a pyasn ipasn_*.dat table)")
    return cfg


def _section(cls, table: dict, name: str, where: str, *, sections: frozenset | set = frozenset()):
    kinds = {f.name: f.metadata["kind"] for f in fields(cls) if "kind" in f.metadata}
    values = {}
    for key, value in table.items():
        if key in sections:
            values[key] = value
            continue
        kind = kinds.get(key)
        if kind is None:
            raise ConfigError(f"{name}: {where}{key}: unknown setting")
        try:
            values[key] = kind.parse(value)
        except _Bad as e:
            raise ConfigError(f"{name}: {where}{key}{e.sub}: {e.message(value)}") from None
    return _checked(cls(**values), name, where)


def _checked(section, name: str, where: str):
    """Checks that relate two settings of one section."""
    if isinstance(section, BlocksConfig) and section.default_ttl > section.max_ttl:
        raise ConfigError(
            f"{name}: {where}default_ttl: {_format_duration(section.default_ttl)} "
            f"is longer than max_ttl {_format_duration(section.max_ttl)}"
        )
    return section


def _policy_section(table: dict, name: str) -> PolicyConfig:
    """[policy]: plain settings plus [policy.classes.NAME] tables merged over the defaults."""
    plain = {k: v for k, v in table.items() if k != "classes"}
    policy = _section(PolicyConfig, plain, name, "[policy] ")
    given = table.get("classes", {})
    if not isinstance(given, dict):
        raise ConfigError(
            f"{name}: [policy] classes: expected tables [policy.classes.NAME], got {_show(given)}"
        )
    classes = dict(DEFAULT_CLASSES)
    required = [f.name for f in fields(ClassPolicy)]
    for cls_name, spec in given.items():
        where = f"[policy.classes.{_key(cls_name)}] "
        if not isinstance(spec, dict):
            raise ConfigError(f"{name}: {where[:-1]}: expected a table, got {_show(spec)}")
        missing = [k for k in required if k not in spec]
        if missing:
            raise ConfigError(f"{name}: {where}{missing[0]}: missing (each class sets {', '.join(required)})")
        classes[cls_name] = _section(ClassPolicy, spec, name, where)
    return replace(policy, classes=classes)


# -- dumping ------------------------------------------------------------------------


def dump(cfg: Config) -> str:
    """The effective configuration as TOML that ``load`` reads back to an equal Config.

    Every class is written out, so the output does not depend on the
    defaults of the netblock version that reads it back. (Loading merges
    classes over the defaults, so a Config built by hand without the default
    classes cannot round-trip; one from ``load`` always does.)
    """
    lines = ["# netblock effective configuration", ""]
    lines += _dump_fields(cfg)
    for section in _SECTIONS:
        value = getattr(cfg, section)
        lines += ["", f"[{section}]", *_dump_fields(value)]
        if section == "policy":
            for cls_name in sorted(value.classes):
                lines += ["", f"[policy.classes.{_key(cls_name)}]", *_dump_fields(value.classes[cls_name])]
    return "\n".join(lines) + "\n"


# The example's stand-in for host_id, whose default is the name of the host that
# loads the file, not of the one that generated the example.
EXAMPLE_HOST_ID = "mx1"


def dump_example() -> str:
    """The defaults as a configuration file with every line commented out.

    This is what the Debian package installs as /etc/netblock/netblock.toml: it
    changes nothing as shipped (an empty TOML document), and uncommenting a
    line sets that key to the value it already has, so an admin edits values
    in place. Generated from the defaults at build time, it cannot drift.
    """
    lines = [
        "# netblock configuration. Every line is commented out and shows the default;",
        "# uncomment a line (and its [section] header) to change that key.",
        "# `netblock config` prints the configuration in effect; the README lists every key.",
        "",
    ]
    for line in dump(Config(host_id=EXAMPLE_HOST_ID)).splitlines()[2:]:
        if line.startswith("host_id = "):
            lines.append("# host_id: this MX's name in a fleet; the default is the host's name")
        lines.append("# " + line if line else "")
    return "\n".join(lines) + "\n"


def _dump_fields(obj) -> list[str]:
    return [
        f"{f.name} = {_toml(f.metadata['kind'].dump(getattr(obj, f.name)))}"
        for f in fields(obj)
        if "kind" in f.metadata
    ]


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_str(k)


def _show(v: Any) -> str:
    """A value as the user wrote it in TOML, for error messages."""
    try:
        text = _toml(v)
    except TypeError:
        text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
