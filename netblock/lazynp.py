"""numpy, imported on first use.

A one-block `netblock add` touches no array; importing numpy costs it more
than everything else it does at 100k installed netblocks. Modules that use
numpy only on their bulk paths import ``np`` from here instead.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING


class _LazyNumpy:
    def __getattr__(self, name):
        value = getattr(importlib.import_module("numpy"), name)
        object.__setattr__(self, name, value)  # the next lookup of this name is a plain attribute
        return value


if TYPE_CHECKING:  # the type checker sees numpy itself
    import numpy as np
else:
    np = _LazyNumpy()
