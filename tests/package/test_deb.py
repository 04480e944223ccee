"""The Debian package, as an admin gets it: built, checked by lintian, installed with
apt into a throwaway Debian 12 root, run from there, purged.

The root is made once by mmdebstrap from the host's configured Debian mirror
(nothing else is contacted) with the package's dependencies preinstalled, and
kept in CACHE keyed by those dependencies and the mirror; every run mounts a
fresh overlay on top of it, so a repeated run costs the build, apt and the
demo, and a changed dependency set makes a new root. Every command in the root
runs in private mount and network namespaces (unshare): mounts vanish with the
process, and nothing in the root, not even a purge's `remove-rules`, can reach
the host's own ruleset. The demo builds its namespaces inside that one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from netblock import config

pytestmark = pytest.mark.package

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("NETBLOCK_PACKAGE_CACHE", "/var/cache/netblock-tests"))
SUITE = "bookworm"
# Besides the package's own dependencies: systemd-analyze for `verify`.
EXTRA = ("systemd",)
# Documentation is not what is tested here; leaving it out makes the first root faster.
DPKG_OPTS = ("force-unsafe-io", "path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/man/*",
             "path-exclude=/usr/share/locale/*", "path-include=/usr/share/doc/*/copyright")
UNITS = ("netblock.service", "netblock-run.service", "netblock-run.timer", "netblock-expire.service",
         "netblock-expire.timer", "netblock-report.service", "netblock-report.timer",
         "netblock-export.service", "netblock-export.timer")
APT = "apt-get -y -q -o Dpkg::Use-Pty=0"


def run(*args, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


# ------------------------------------------------------------------ the mirror

def _one_line_sources(text: str) -> list[tuple[str, str, str | None]]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
        if m:
            opts = dict(o.split("=", 1) for o in (m.group(1) or "").split() if "=" in o)
            out.append((m.group(2), m.group(3), opts.get("signed-by")))
    return out


def _deb822_sources(text: str) -> list[tuple[str, str, str | None]]:
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += "\n" + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        signed = fields.get("signed-by")
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                out.append((uri, suite, signed if signed and "\n" not in signed else None))
    return out


def debian_mirror_sources() -> str:
    """The host's configured Debian 12 entries (main only), as deb822 for mmdebstrap."""
    entries = []
    apt = Path("/etc/apt")
    if (apt / "sources.list").exists():
        entries += _one_line_sources((apt / "sources.list").read_text())
    for path in sorted((apt / "sources.list.d").glob("*")):
        if path.suffix == ".list":
            entries += _one_line_sources(path.read_text())
        elif path.suffix == ".sources":
            entries += _deb822_sources(path.read_text())
    stanzas = []
    for uri, suite, signed in dict.fromkeys(e for e in entries if re.fullmatch(rf"{SUITE}(-\w+)?", e[1])):
        stanzas.append("\n".join(["Types: deb", f"URIs: {uri}", f"Suites: {suite}", "Components: main",
                                  *([f"Signed-By: {signed}"] if signed else [])]))
    assert stanzas, "no Debian 12 (bookworm) mirror configured in /etc/apt/sources.list*"
    return "\n\n".join(stanzas) + "\n"


def test_mirror_is_read_from_both_source_formats():
    one_line = "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main # x\n# deb http://no\n"
    assert _one_line_sources(one_line) == [("http://m.example/debian", "bookworm", "/k.gpg")]
    deb822 = ("Types: deb deb-src\n# a comment\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n"
              "Components: main\n\nTypes: deb\nEnabled: no\nURIs: http://off.example\nSuites: bookworm\n")
    assert _deb822_sources(deb822) == [("http://m.example/debian", "bookworm", None),
                                       ("http://m.example/debian", "bookworm-updates", None)]


# ------------------------------------------------------------------ build

@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    r = run(str(REPO / "scripts/build-deb.sh"), str(out))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    (path,) = out.glob("netblock_*_all.deb")
    return path


def control_field(deb: Path, name: str) -> list[str]:
    """A relationship field as package names: first alternative, no version, no :any."""
    text = run("dpkg-deb", "-f", str(deb), name).stdout
    return [re.split(r"[\s(:]", alt.split("|")[0].strip())[0] for alt in text.split(",") if alt.strip()]


# ------------------------------------------------------------------ the throwaway root

def base_root(includes: list[str]) -> Path:
    """A Debian 12 root with ``includes`` installed, made once per package set and mirror."""
    sources = debian_mirror_sources()
    recipe = "\n".join([SUITE, sources, *includes, *DPKG_OPTS])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    root = CACHE / f"{SUITE}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once build it once
        if root.is_dir():
            return root
        partial = CACHE / f"{SUITE}-{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        (CACHE / "sources").write_text(sources)
        debs = CACHE / "debs"
        debs.mkdir(exist_ok=True)
        r = run("mmdebstrap", "--variant=apt", "--format=directory", "--skip=essential/unlink",
                "--skip=download/empty", '--aptopt=Acquire::Retries "3"',
                *(f"--dpkgopt={o}" for o in DPKG_OPTS), "--include=" + ",".join(includes),
                '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
                f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
                f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
                SUITE, str(partial), str(CACHE / "sources"), timeout=1800)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        partial.rename(root)
        for old in CACHE.glob(f"{SUITE}-*"):  # roots of older dependency sets
            if old != root and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return root


class Root:
    """An overlay over the cached root: writes go to ``upper``, thrown away with it."""

    def __init__(self, lower: Path, scratch: Path):
        self.lower = lower
        self.upper, self.work, self.merged = (scratch / d for d in ("upper", "work", "merged"))
        for d in (self.upper, self.work, self.merged):
            d.mkdir()

    def sh(self, script: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run ``script`` with /bin/sh -e inside the root, in its own mount and network namespaces."""
        m = self.merged
        setup = (
            "set -e\n"
            f"mount -t overlay overlay -o lowerdir={self.lower},upperdir={self.upper},workdir={self.work} {m}\n"
            f"mount -t proc proc {m}/proc\n"
            f"mount -t sysfs sysfs {m}/sys\n"
            f"mount --rbind /dev {m}/dev\n"
            f"mount -t tmpfs -o mode=755 tmpfs {m}/run\n"
            f"exec chroot {m} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "
            'DEBIAN_FRONTEND=noninteractive /bin/sh -ec "$1"'
        )
        return run("unshare", "--mount", "--propagation", "private", "--net", "--",
                   "/bin/sh", "-c", setup, "sh", script, timeout=timeout)

    def ok(self, script: str, timeout: float = 600) -> str:
        r = self.sh(script, timeout)
        assert r.returncode == 0, f"{script}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout


@pytest.fixture(scope="module")
def root(deb, tmp_path_factory) -> Root:
    """The package installed with apt into a fresh overlay of the cached Debian 12 root."""
    includes = sorted({*control_field(deb, "Depends"), *control_field(deb, "Recommends"), *EXTRA} - {"python3:any"})
    r = Root(base_root(includes), tmp_path_factory.mktemp("debroot"))
    (r.upper / "tmp").mkdir()
    os.chmod(r.upper / "tmp", 0o1777)
    shutil.copy(deb, r.upper / "tmp" / "netblock.deb")
    out = r.ok(f"{APT} install /tmp/netblock.deb")
    # Its dependencies were all in the root already: apt installed the package alone.
    assert re.search(r"^0 upgraded, 1 newly installed, 0 to remove", out, re.M), out
    return r


# ------------------------------------------------------------------ the package on its own

def test_lintian_reports_no_errors(deb):
    r = run("lintian", "--pedantic", str(next(deb.parent.glob("netblock_*.changes"))))
    tags = [line for line in r.stdout.splitlines() if re.match(r"[EWIPX]: ", line)]
    print("\nlintian:\n" + ("\n".join(tags) or "(no tags)"))
    assert not [t for t in tags if t.startswith("E: ")], tags
    assert r.returncode == 0, r.stdout + r.stderr


def test_package_ships_what_an_admin_needs(deb, tmp_path):
    depends = control_field(deb, "Depends")
    for module in ("python3-netaddr", "python3-pyroute2", "python3-nftables", "python3-numpy",
                   "python3-prometheus-client", "python3-iptables"):
        assert module in depends
    assert not [d for d in depends if "pip" in d]
    assert {"python3-psycopg", "python3-matplotlib"} <= set(control_field(deb, "Suggests"))
    x = tmp_path / "x"
    run("dpkg-deb", "-R", str(deb), str(x))
    assert (x / "DEBIAN/conffiles").read_text().split() == ["/etc/netblock/netblock.toml"]
    # The conffile changes nothing until edited, and shows every default.
    shipped = (x / "etc/netblock/netblock.toml").read_text()
    assert tomllib.loads(shipped) == {}
    assert shipped == config.dump_example()
    for unit in UNITS:
        text = (x / "lib/systemd/system" / unit).read_text()
        assert "/usr/local/bin" not in text
        assert "\nDocumentation=man:netblock(8)\n" in text
        assert "ExecStart=/usr/bin/netblock " in text or unit.endswith(".timer")
    assert (x / "usr/bin/netblock").stat().st_mode & 0o111
    assert "complete -o default -F _netblock netblock" in (
        x / "usr/share/bash-completion/completions/netblock").read_text()
    man = x / "usr/share/man/man8/netblock.8.gz"
    r = run("man", "--warnings", "-l", str(man), env={**os.environ, "MANWIDTH": "100", "LC_ALL": "C.UTF-8"})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    for command in ("netblock remove-rules", "netblock allow add", "netblock report"):
        assert command in r.stdout


# ------------------------------------------------------------------ installed with apt

def test_installed_with_apt_enabled_by_nothing(root):
    out = root.ok("dpkg-query -W -f='${Status} ${Version}\\n' netblock; netblock --version; "
                  "find /etc/systemd/system -name 'netblock*'; netblock config --json")
    assert out.startswith("install ok installed ")
    assert "netblock 0." in out
    assert "/etc/systemd/system" not in out  # no unit enabled, none linked
    assert '"backend": "nftables"' in out


def test_demo_runs_from_the_installed_package(root):
    out = root.ok("netblock demo", timeout=300)
    assert "Host/Mask            Packets  Bytes" in out
    assert "What happened:" in out and "your own firewall was not touched" in out


def test_systemd_analyze_verify_in_the_root(root):
    units = " ".join(f"/lib/systemd/system/{u}" for u in UNITS)
    r = root.sh(f"systemd-analyze verify --man=no {units}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "error" not in r.stderr.lower(), r.stderr


def test_bash_completion_from_the_package(root):
    out = root.ok("bash -c '. /usr/share/bash-completion/completions/netblock; "
                  "COMP_WORDS=(netblock remove-r); COMP_CWORD=1; _netblock; echo \"${COMPREPLY[@]}\"'")
    assert out.split() == ["remove-rules"]


def test_purge_removes_kernel_objects_and_state(root):
    """Last: purges with kernel objects, without, with a broken configuration; then reinstalls."""
    out = root.ok("netblock add 198.18.7.0/24 >/dev/null\n"
                  "nft list set inet netblock block4 | grep -c 198.18.7.0/24\n"
                  "test -s /var/lib/netblock/netblock.db\n"
                  f"{APT} purge netblock\n"
                  "echo tables: $(nft list tables)\n"
                  "for p in /var/lib/netblock /etc/netblock /usr/bin/netblock; do test ! -e $p || echo left $p; done\n")
    assert "removed netblock's kernel objects" in out
    assert re.search(r"^tables: *$", out, re.M), out
    assert "left " not in out
    # Nothing in the kernel, nothing stored: the purge still succeeds.
    out = root.ok(f"{APT} install /tmp/netblock.deb >/dev/null\n"
                  f"{APT} purge netblock\n"
                  "test ! -e /var/lib/netblock\n")
    assert "no netblock kernel objects were installed" in out
    # A configuration netblock refuses does not block the removal either.
    out = root.ok(f"{APT} install /tmp/netblock.deb >/dev/null\n"
                  "echo 'backend = 1' >> /etc/netblock/netblock.toml\n"
                  f"{APT} purge netblock 2>&1\n"
                  "test ! -e /etc/netblock\n")
    assert "/etc/netblock/netblock.toml: backend" in out and "kernel objects not removed" in out
    root.ok(f"{APT} install /tmp/netblock.deb >/dev/null")
