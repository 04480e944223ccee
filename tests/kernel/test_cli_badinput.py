"""Bad input through the real `netblock` command: one line on stderr naming the
offending value, exit status 2, and the store and the kernel exactly as before.

One namespace for the module: every case must leave it untouched, which is the
point, and a case that did not would show up in the cases after it too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import NETBLOCK, clean_env
from netns import SERVER4, SERVER6, scene as make_scene

pytestmark = pytest.mark.kernel

ALLOWLISTED = "198.18.60.7"

# (argv after the global options, stdin, text the error line must contain)
CASES = [
    (["add", "198.18.1.256"], None, "198.18.1.256"),
    (["add", "198.18.1.0/33"], None, "198.18.1.0/33"),
    (["add", "2001:db8::/129"], None, "2001:db8::/129"),
    (["add", "010.1.2.3"], None, "010.1.2.3"),
    (["add", "2130706433"], None, "2130706433"),
    (["add", "0x7f.1"], None, "0x7f.1"),
    (["add", "fe80::1%eth0"], None, "fe80::1%eth0"),
    (["add", ""], None, "''"),
    (["add", "198.18.1.1x"], None, "198.18.1.1x"),
    (["add", "198.18.1.1\n198.18.1.2"], None, "198.18.1.1\\n198.18.1.2"),
    (["add", "198.18.1.1;reboot"], None, "198.18.1.1;reboot"),
    (["add", "$(reboot)"], None, "$(reboot)"),
    (["add", "0.0.0.0/0", "--force"], None, "0.0.0.0/0"),
    (["add", "::/0", "--force"], None, "::/0"),
    (["add", "198.0.0.0/7"], None, "198.0.0.0/7"),
    (["add", "0.0.0.0/1", "128.0.0.0/1", "--force"], None, "0.0.0.0/1"),
    (["add", "2000::/15", "--force"], None, "2000::/15"),
    (["add", "-", "--force"], "198.18.7.0/24\n64.0.0.0/3\n", "stdin line 2"),
    (["add", "0.0.0.0/4", "16.0.0.0/4", "--force"], None, "over the cap of 268435456"),
    (["add", "2001:db8::/31"], None, "2001:db8::/31"),
    (["add", "127.0.0.1"], None, "127.0.0.1"),
    (["add", "::ffff:127.0.0.1"], None, "::ffff:127.0.0.1"),
    (["add", "169.254.10.0/24"], None, "169.254.10.0/24"),
    (["add", "ff02::1"], None, "ff02::1"),
    (["add", "::"], None, "::"),
    (["add", SERVER4], None, SERVER4),
    (["add", SERVER6], None, SERVER6),
    (["add", ALLOWLISTED], None, ALLOWLISTED),
    (["add", "198.18.1.1", "--ttl", "0s"], None, "0s"),
    (["add", "198.18.1.1", "--ttl", "7"], None, "'7'"),
    (["add", "198.18.1.1", "--ttl", "100d"], None, "100d"),
    (["add", "198.18.1.1", "--ttl", "1h", "--permanent"], None, "--ttl 1h"),
    (["add", "198.18.2.1", "198.18.2.2", "198.18.2.999", "198.18.2.4"], None, "198.18.2.999"),
    (["add", "-"], "198.18.3.0/24\n# fine so far\n198.18.4.0/24 ; SBL1\n198.18.5.0/24/\n198.18.6.0/24\n",
     "stdin line 4"),
    (["add"], None, "TARGET"),
    (["ingest", "/dev/zero"], None, "/dev/zero: a character device, not a regular file"),
    (["del", "198.18.99.0/24"], None, "198.18.99.0/24"),
    (["del", "198.18.50.0/24", "198.18.99.0/24"], None, "198.18.99.0/24"),
    (["allow", "del", "198.18.99.9"], None, "198.18.99.9"),
    (["allow", "add", "198.18.1.1/40"], None, "198.18.1.1/40"),
]


class Env:
    def __init__(self, sc, tmp: Path):
        self.sc = sc
        self.db = tmp / "nb.db"
        self.conf = tmp / "netblock.toml"
        self.conf.write_text(f'lock_file = "{tmp}/run/netblock.lock"\n')

    def run(self, argv, stdin=None):
        env = clean_env()
        return self.sc.server_exec(NETBLOCK, "--config", str(self.conf), "--db", str(self.db),
                                   "--backend", "nftables", *argv, check=False, input=stdin, env=env)

    def snapshot(self) -> tuple[dict[str, bytes], str]:
        """The store's files byte for byte, and the namespace's whole ruleset."""
        files = {p.name: p.read_bytes() for p in sorted(self.db.parent.glob(self.db.name + "*"))}
        return files, self.sc.server_exec("nft", "list", "ruleset").stdout

    def listings(self) -> tuple[str, str]:
        return self.run(["list", "--all", "--json"]).stdout, self.run(["allow", "list", "--json"]).stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with make_scene("h7bad") as sc:
        e = Env(sc, tmp_path_factory.mktemp("badinput"))
        for argv in (["add", "198.18.50.0/24", "2001:db8:50::/48", "--permanent", "--reason", "baseline"],
                     ["add", "198.18.52.0/24", "--permanent"],
                     ["allow", "add", ALLOWLISTED]):
            r = e.run(argv)
            assert r.returncode == 0, r.stderr
        e.before = e.snapshot()
        e.before_listings = e.listings()
        assert "198.18.50.0/24" in e.before_listings[0] and ALLOWLISTED in e.before_listings[1]
        assert "198.18.50.0/24" in e.before[1] and "2001:db8:50::/48" in e.before[1]
        yield e
        assert e.listings() == e.before_listings


@pytest.mark.parametrize("argv,stdin,named", CASES, ids=[repr(" ".join(c[0])) for c in CASES])
def test_refused_with_one_line_and_nothing_changed(env, argv, stdin, named):
    r = env.run(argv, stdin)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("netblock"), r.stderr
    assert named in lines[0]
    assert "Traceback" not in r.stderr
    assert env.snapshot() == env.before


def test_enough_distinct_cases():
    assert len({(tuple(argv), stdin) for argv, stdin, _ in CASES}) == len(CASES) >= 30
