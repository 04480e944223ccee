"""Network namespaces for kernel tests: the lab of `netblock demo`, reused.

The implementation lives in netblock/demo/lab.py so the demo and the tests build
their namespaces the same way; see its docstring for the safety rules.
"""

from netblock.demo.lab import (  # noqa: F401
    ALLOWED,
    CLIENT4,
    CLIENT6,
    SERVER4,
    SERVER6,
    ChildError,
    Scene,
    build_scene,
    check_allowed,
    nsexec,
    probe,
    run_in_netns,
    scene,
    send_syns,
    sh,
    wait_for,
)

__all__ = [
    "ALLOWED",
    "CLIENT4",
    "CLIENT6",
    "SERVER4",
    "SERVER6",
    "ChildError",
    "Scene",
    "build_scene",
    "check_allowed",
    "nsexec",
    "probe",
    "run_in_netns",
    "scene",
    "send_syns",
    "sh",
    "wait_for",
]
