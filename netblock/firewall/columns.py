"""Expiries as a column of epoch seconds, shared by the set backends' fast diff."""

from __future__ import annotations

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
