"""The ipset backend's iptables side: its rules as rendered from rules/ipset.rules, and where they go.

Where the iptables rules go: wherever the host's own ``iptables`` looks.
If ``iptables -V`` says "(nf_tables)" (Debian 12's default), they are loaded
with that iptables's ``iptables-restore --noflush``; if it says "(legacy)",
they are placed through python-iptables (libiptc), which drives only
xtables-legacy. Rules placed the other way would be invisible to the host's
``iptables -L``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from importlib import resources

from netblock.errors import KernelError, KernelFeatureMissing, NetblockError, PermissionDenied, ToolMissing
from netblock.firewall import Settings
from netblock.firewall.names import IPSET_SET, IPT_CHAIN, IPT_COMMENT, IPT_PARENT
from netblock.firewall.xtables import ports_match

SET_TYPE = "hash:net"
FAMILIES = {"ipv4": (socket.AF_INET, "inet", "iptables"), "ipv6": (socket.AF_INET6, "inet6", "ip6tables")}


# ------------------------------------------------------------------ rules/ text

def _template() -> dict[str, str]:
    """The two sections of rules/ipset.rules, comments dropped."""
    text = resources.files("netblock.rules").joinpath("ipset.rules").read_text()
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in ("# [ipset]", "# [iptables]"):
            current = sections.setdefault(stripped[3:-1], [])
        elif current is not None and stripped and not stripped.startswith("#"):
            current.append(stripped)
    return {k: "\n".join(v) + "\n" for k, v in sections.items()}


def target(verdict: str) -> str:
    return {"drop": "DROP", "count": "RETURN"}.get(verdict, "REJECT --reject-with tcp-reset")


def render(settings: Settings, family: str) -> tuple[str, str]:
    """(ipset restore text, iptables-restore text) for one family, as installed."""
    fields = dict(set=IPSET_SET[family], family=FAMILIES[family][1], maxelem=settings.maxelem,
                  chain=IPT_CHAIN, parent=IPT_PARENT, comment=IPT_COMMENT,
                  target=target(settings.verdict),
                  ports=ports_match(settings.ports, syn_only=settings.verdict == "count"))
    sections = _template()
    return sections["ipset"].format(**fields), sections["iptables"].format(**fields)


def rule_lines(iptables_text: str) -> tuple[str, str]:
    """The chain's match rule and the parent's jump rule (``-I parent 1`` as written)."""
    rules = [line for line in iptables_text.splitlines() if line.startswith(("-A ", "-I "))]
    chain_rule = next(r for r in rules if r.startswith(f"-A {IPT_CHAIN} "))
    jump = next(r for r in rules if r.startswith(f"-I {IPT_PARENT} "))
    return chain_rule, jump


def appended(jump: str) -> str:
    """The jump rule as iptables-save lists it (``-A parent``), from its ``-I parent 1`` form."""
    return "-A " + jump[3:].replace(f"{IPT_PARENT} 1 ", f"{IPT_PARENT} ", 1)


# ------------------------------------------------------------------ iptables placement

@dataclass
class Iptables:
    """The host's iptables for one family: which binary, and which kernel API it drives."""

    tool: str  # "iptables" or "ip6tables"
    path: str
    mode: str  # "nf_tables" or "legacy"

    @classmethod
    def detect(cls, tool: str) -> "Iptables":
        path = shutil.which(tool)
        if path is None:
            raise ToolMissing(f"{tool}: not found on PATH (install the iptables package)")
        try:
            out = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=30).stdout
        except OSError as exc:
            raise ToolMissing(f"{path}: cannot run ({exc.strerror})") from exc
        mode = "legacy" if "(legacy)" in out else "nf_tables" if "nf_tables" in out else None
        if mode is None:
            raise ToolMissing(f"{path}: unrecognised version output {out.strip()!r}")
        if mode == "nf_tables":
            for helper in (f"{tool}-restore", f"{tool}-save"):
                if shutil.which(helper) is None:
                    raise ToolMissing(f"{helper}: not found on PATH next to {path}")
        return cls(tool, path, mode)

    def describe(self) -> str:
        via = f"{self.tool}-restore --noflush" if self.mode == "nf_tables" else "python-iptables"
        return f"{self.path} ({self.mode}) via {via}"

    # The state of our rules, as the host's iptables-save shows them.
    def read(self) -> tuple[bool, list[str], list[str]]:
        """(chain exists, rules of our chain, parent rules that jump to our chain)."""
        if self.mode == "legacy":
            return _LegacyRules(self.tool).read()
        out = self._run(f"{self.tool}-save", "-t", "filter")
        lines = out.splitlines()
        exists = any(line.startswith(f":{IPT_CHAIN} ") for line in lines)
        rules = [line for line in lines if line.startswith(f"-A {IPT_CHAIN} ")]
        jumps = [line for line in lines
                 if line.startswith(f"-A {IPT_PARENT} ") and line.endswith(f" -j {IPT_CHAIN}")]
        return exists, rules, jumps

    def write(self, chain_rule: str | None, jump: str | None, old_jumps: list[str], drop_chain: bool) -> None:
        """Replace our chain's contents and our jump in one restore (chain_rule None: remove)."""
        if self.mode == "legacy":
            return _LegacyRules(self.tool).write(chain_rule, jump, old_jumps, drop_chain)
        lines = ["*filter"]
        if chain_rule is not None:
            lines += [f":{IPT_CHAIN} - [0:0]", f"-F {IPT_CHAIN}", chain_rule]
        lines += ["-D" + old[2:] for old in old_jumps]
        if jump is not None:
            lines.append(jump)
        if drop_chain:
            lines += [f"-F {IPT_CHAIN}", f"-X {IPT_CHAIN}"]
        lines.append("COMMIT")
        self._run(f"{self.tool}-restore", "--noflush", input="\n".join(lines) + "\n")

    def _run(self, prog: str, *args: str, input: str | None = None) -> str:
        path = shutil.which(prog)
        if path is None:
            raise ToolMissing(f"{prog}: not found on PATH")
        try:
            r = subprocess.run([path, *args], input=input, capture_output=True, text=True, timeout=120)
        except OSError as exc:
            raise ToolMissing(f"{path}: cannot run ({exc.strerror})") from exc
        if r.returncode != 0:
            err = " ".join(r.stderr.split()) or f"exit status {r.returncode}"
            if "Permission denied" in err or "you must be root" in err or "Operation not permitted" in err:
                raise PermissionDenied(f"{prog}: permission denied (needs CAP_NET_ADMIN)")
            if "No chain/target/match by that name" in err or "Couldn't load" in err:
                raise KernelFeatureMissing(f"{prog}: kernel lacks a needed match or target: {err}")
            raise KernelError(f"{prog} refused the netblock rules: {err}")
        return r.stdout


class _LegacyRules:
    """Our two rules through python-iptables (libiptc), for hosts whose iptables is xtables-legacy."""

    def __init__(self, tool: str):
        try:
            import iptc
        except Exception as exc:  # noqa: BLE001 - the binding fails in several ways when libxtables is absent
            raise ToolMissing(f"python-iptables: cannot load ({exc})") from exc
        self.iptc = iptc
        self.v6 = tool == "ip6tables"

    def _table(self):
        iptc = self.iptc
        try:
            table = (iptc.Table6 if self.v6 else iptc.Table)("filter")
            table.autocommit = False
            table.refresh()
            return table
        except iptc.IPTCError as exc:
            raise _legacy_error(exc) from exc

    def read(self):
        table = self._table()
        chain = next((c for c in table.chains if c.name == IPT_CHAIN), None)
        rules = [_legacy_text(IPT_CHAIN, r) for r in chain.rules] if chain else []
        parent = self.iptc.Chain(table, IPT_PARENT)
        jumps = [_legacy_text(IPT_PARENT, r) for r in parent.rules if r.target.name == IPT_CHAIN]
        return chain is not None, rules, jumps

    def write(self, chain_rule, jump, old_jumps, drop_chain):
        iptc = self.iptc
        table = self._table()
        try:
            parent = iptc.Chain(table, IPT_PARENT)
            for rule in list(parent.rules):
                if rule.target.name == IPT_CHAIN and _legacy_text(IPT_PARENT, rule) in old_jumps:
                    parent.delete_rule(rule)
            if chain_rule is not None:
                chain = iptc.Chain(table, IPT_CHAIN)
                if not table.is_chain(IPT_CHAIN):
                    table.create_chain(IPT_CHAIN)
                chain.flush()
                chain.append_rule(_legacy_rule(iptc, chain_rule, self.v6))
            if jump is not None:
                parent.insert_rule(_legacy_rule(iptc, jump, self.v6))
            if drop_chain and table.is_chain(IPT_CHAIN):
                chain = iptc.Chain(table, IPT_CHAIN)
                chain.flush()
                table.delete_chain(IPT_CHAIN)
            table.commit()
        except (iptc.IPTCError, ValueError) as exc:
            raise _legacy_error(exc) from exc
        finally:
            table.autocommit = True


def _legacy_error(exc: Exception) -> NetblockError:
    text = " ".join(str(exc).split())
    if "Permission denied" in text or "must be root" in text:
        return PermissionDenied(f"python-iptables: permission denied (needs CAP_NET_ADMIN and CAP_NET_RAW): {text}")
    return KernelError(f"python-iptables refused the netblock rules: {text}")


def _legacy_rule(iptc, line: str, v6: bool):
    """Build a python-iptables Rule from one of our own rendered rule lines."""
    words = line.split()[2:]
    if words[0] == "1":
        words = words[1:]
    rule = iptc.Rule6() if v6 else iptc.Rule()
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-p":
            rule.protocol = words[i + 1]
            i += 2
        elif word == "-m":
            match = rule.create_match(words[i + 1])
            i += 2
            while i < len(words) and words[i].startswith("--"):
                opt = words[i][2:].replace("-", "_")
                args = []
                i += 1
                while i < len(words) and not words[i].startswith("-"):
                    args.append(words[i])
                    i += 1
                setattr(match, opt, args if len(args) > 1 else args[0] if args else "")
        elif word == "-j":
            tgt = rule.create_target(words[i + 1])
            i += 2
            while i < len(words) and words[i].startswith("--"):
                setattr(tgt, words[i][2:].replace("-", "_"), words[i + 1])
                i += 2
        else:
            raise ValueError(f"unexpected word {word!r} in {line!r}")
    return rule


def _legacy_text(chain: str, rule) -> str:
    """One rule in iptables-save syntax, from python-iptables' view of it."""
    parts = [f"-A {chain}"]
    if rule.protocol and rule.protocol not in ("ip", "all"):
        parts.append(f"-p {rule.protocol}")
    for match in rule.matches:
        parts.append(f"-m {match.name}")
        for key, value in match.get_all_parameters().items():
            parts.append(f"--{key} {' '.join(value)}".rstrip())
    parts.append(f"-j {rule.target.name}")
    for key, value in rule.target.get_all_parameters().items():
        parts.append(f"--{key} {' '.join(value)}".rstrip())
    return " ".join(parts)
