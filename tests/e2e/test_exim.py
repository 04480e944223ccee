"""Exim (Debian's exim4-daemon-light, unpacked privately) against a spam storm."""

import pytest
import storm

pytestmark = pytest.mark.e2e


def test_exim_storm_is_blocked_by_netblock(mail_scene):
    out = storm.run(mail_scene("exim", "nftables"))
    print(f"\n--- exim, nftables\n{out.tables}")
    storm.check(out)
