"""Fixtures of the end-to-end suite: a real MTA, DNS and netblock daemon in namespaces.

Needs what scripts/e2e-setup.sh installs (postfix, dnsmasq, Exim unpacked
under /opt/netblock-e2e). Every process and namespace a test starts is
removed by the fixture's finalizer, also when the test fails.
"""

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from mta import MailScene, make_root  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end tests with real Postfix/Exim in network namespaces (root)")


@pytest.fixture
def mail_scene(request):
    """``mail_scene(mta, backend)`` builds a scene; all scenes are torn down after the test."""
    made = []

    def build(mta: str, backend: str) -> MailScene:
        sc = MailScene(mta, backend, make_root())
        made.append(sc)
        sc.build()
        return sc

    yield build
    for sc in made:
        try:
            sc.close()
        finally:
            if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
                print(f"\n{sc.mta} scene output:\n{sc.mta_output()}\n{sc.daemon_errors()}")
            shutil.rmtree(sc.root, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.when == "call":
        item.rep_call = rep
    return rep
