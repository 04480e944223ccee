import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from netns import scene as _scene  # noqa: E402


@pytest.fixture
def scene():
    """A fresh server/client namespace pair, deleted afterwards."""
    with _scene() as sc:
        yield sc
