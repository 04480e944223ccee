"""netblock: kernel port-25 drop rules kept in step with what the mail logs say."""

__version__ = "0.1.0"
