"""User-facing errors.

Every failure a user can cause (bad data, bad checkpoint, impossible settings)
raises a subclass of :class:`LowrankError` whose message is one line saying
what went wrong and what to do. The CLI turns these into exit status 2 and the
app into ``st.error``; anything else is a bug and keeps its traceback.
"""


class LowrankError(Exception):
    """Base class of errors caused by the user's input or environment."""


class DataError(LowrankError):
    """CIFAR-10 could not be found, downloaded or decoded."""


class DataMissing(DataError):
    """CIFAR-10 is nowhere it was looked for (and no download was allowed)."""


class UnsafePickleError(DataError):
    """A pickle named a global that CIFAR-10 batches never contain."""


class CheckpointError(LowrankError):
    """A checkpoint folder is missing, unreadable or of another architecture."""


class ConfigError(LowrankError, ValueError):
    """A setting is out of range or names something that does not exist."""
