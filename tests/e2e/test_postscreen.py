"""Postfix with postscreen in front of smtpd (pregreet and DNSBL tests) against a spam storm."""

import pytest
import storm

pytestmark = pytest.mark.e2e


def test_postscreen_storm_is_blocked_by_netblock(mail_scene):
    out = storm.run(mail_scene("postscreen", "nftables"))
    print(f"\n--- postscreen, nftables\n{out.tables}")
    storm.check(out)
