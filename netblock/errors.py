"""One exception type per failure a user can act on.

The CLI turns every NetblockError into one line on stderr and its exit_status;
anything else escaping is a bug and keeps its traceback.
"""


class NetblockError(Exception):
    """A failure with a message the user can act on (exit status 1)."""

    exit_status = 1


class BadInput(NetblockError):
    """Malformed or refused input: nothing was changed (exit status 2)."""

    exit_status = 2


class LimitExceeded(BadInput):
    """A block wider than netblock's floor, or a kernel state over its IPv4 cap (netblock/limits.py)."""


class NotARegularFile(BadInput):
    """A log source that is a FIFO, a device, a socket or a directory: reading it could block forever."""


class ConfigError(BadInput):
    """The configuration file has an unknown key or a value of the wrong type."""


class PermissionDenied(NetblockError):
    """The process lacks CAP_NET_ADMIN (or CAP_NET_RAW for xtables-legacy), or cannot write the store."""


class ToolMissing(NetblockError):
    """A library or program the backend needs is not installed (libnftables, ipset, xtables-legacy)."""


class KernelFeatureMissing(NetblockError):
    """The running kernel lacks a feature the backend needs (nf_tables, ip_set, a match module)."""


class NameClash(NetblockError):
    """A kernel object with netblock's name exists and was not created by netblock."""


class KernelError(NetblockError):
    """The kernel refused a transaction; nothing of it was applied."""


class StoreError(NetblockError):
    """The store cannot be opened, read or written."""


class Busy(NetblockError):
    """Another netblock process holds the kernel lock for too long."""
