"""The docstring examples of the pure core are executable and stay true."""

import doctest
import importlib

import pytest

MODULES = ["helpers", "netblock.reports.tables", "netblock.decide.manual", "netblock.aggregate", "netblock.durations", "netblock.decide.targets", "netblock.reports.export", "netblock.limits",
           "netblock.printable"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
