"""The one exception type for problems a user can cause (bad file, bad config, unknown name).

The CLI turns it into one readable line and exit code 2; anything else is a bug and keeps its
traceback.
"""


class FinedError(Exception):
    """A user-facing error: the message alone must tell what is wrong and where."""
