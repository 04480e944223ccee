"""Postfix (plain smtpd with a real site's restrictions) against a spam storm, nftables and ipset."""

import pytest
import storm

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("backend", ["nftables", "ipset"])
def test_postfix_storm_is_blocked_by_netblock(mail_scene, backend):
    out = storm.run(mail_scene("postfix", backend))
    print(f"\n--- postfix, {backend}\n{out.tables}")
    storm.check(out)
