"""Expiries as a column of epoch seconds, shared by the set backends' fast diff."""

from __future__ import annotations

import math
from typing import Any

from netblock.lazynp import np


def timestamps(expiries: list) -> np.ndarray:
    """Epoch seconds (NaN: never) of datetimes; when few distinct ones are shared, each is converted once.

    Policy blocks of one tick share their expiry, so 100k expiries are
    usually a handful of distinct datetimes: converting each once keeps a
    100k-element diff within the small-change budget.
    """
    if expiries and expiries.count(expiries[0]) == len(expiries):  # one expiry for all: a C-speed check
        e = expiries[0]
        return np.full(len(expiries), np.nan if e is None else e.timestamp(), dtype=np.float64)
    distinct = dict.fromkeys(expiries)
    if len(distinct) * 4 <= len(expiries):
        seconds = {e: np.nan if e is None else e.timestamp() for e in distinct}
        return np.fromiter(map(seconds.__getitem__, expiries), dtype=np.float64, count=len(expiries))
    return np.fromiter((np.nan if e is None else e.timestamp() for e in expiries), dtype=np.float64,
                       count=len(expiries))


def spliced(keys, expiry, version: int, removed, added, updated) -> tuple:
    """A set's snapshot after apply_region() (nftables and ipset keep the same form): sorted keys
    (first << 8 | prefixlen; IPv4 packed as bytes, IPv6 a list of ints) and expiries (epoch seconds,
    NaN: permanent) as bytes, with the few changes spliced in by bisection."""
    from array import array
    from bisect import bisect_left

    # From bytes, which array() copies in one go (from a memoryview it would read element by element).
    arr_k: Any = array("Q", bytes(keys)) if version == 4 else list(keys)
    arr_e = array("d", bytes(expiry))
    for v, k in removed:
        if v == version:
            i = bisect_left(arr_k, k)
            if i < len(arr_k) and arr_k[i] == k:
                del arr_k[i]
                del arr_e[i]
    for v, k, e in updated:
        if v == version:
            i = bisect_left(arr_k, k)
            if i < len(arr_k) and arr_k[i] == k:
                arr_e[i] = math.nan if e is None else e
    for v, k, e in added:
        if v == version:
            i = bisect_left(arr_k, k)
            arr_k.insert(i, k)
            arr_e.insert(i, math.nan if e is None else e)
    return (arr_k.tobytes() if isinstance(arr_k, array) else arr_k), arr_e.tobytes()
