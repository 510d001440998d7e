"""Errors a user can cause, each with a message that says what to fix.

The CLI turns a :class:`UserError` into one line on stderr and exit code 2.
"""


class UserError(Exception):
    """Bad input or configuration; the message names the problem."""


class DatasetUnreadable(UserError):
    """A dataset URI that cannot be read at all (missing, not Parquet, wrong schema)."""


class ConfigError(UserError):
    """An audit config or dataset spec that does not validate."""


class UnsafeModelError(UserError):
    """A model folder or repo that would need pickle checkpoints or remote code."""


class TransientStorageError(Exception):
    """A storage error worth retrying (timeouts, throttling, connection resets)."""


class DataOverLimit(UserError):
    """The data read fine but fails a limit the user set (e.g. too many quarantined rows): exit 1."""
