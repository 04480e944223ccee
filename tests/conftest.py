import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from netns import scene as _scene  # noqa: E402

# One throwaway PostgreSQL server per run (tests/pg.py), shared by the store
# conformance tests and the fleet tests.
pytest_plugins = ["pg"]


@pytest.fixture
def scene():
    """A fresh server/client namespace pair, deleted afterwards."""
    with _scene() as sc:
        yield sc
