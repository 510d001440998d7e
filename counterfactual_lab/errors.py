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


class UntrustedResultError(UserError):
    """A stored task result (or its cache record) that this project did not write: refused unread.

    Only data-only records of our own types are ever decoded; anything else (a pickle, a
    foreign serializer, a malformed record) raises this with the storage path at fault.
    """


class TooManyFailedItems(DataOverLimit):
    """More than ``runtime.max_failed_fraction`` of a run's work items failed: the run is
    published, marked failed, and the CLI exits 1 with the commonest error."""
