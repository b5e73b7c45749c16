"""The one exception type for problems a user can cause (bad file, bad config, unknown name).

The CLI turns it into one readable line and exit code 2; anything else is a bug and keeps its
traceback.
"""


class FinedError(Exception):
    """A user-facing error: the message alone must tell what is wrong and where."""


class TrainingDiverged(FinedError):
    """Training produced numbers that are not finite: a property of its settings (a learning
    rate too high), which a search records as that trial's result and goes on."""
