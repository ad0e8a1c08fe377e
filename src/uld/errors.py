"""The one exception type users see: the CLI prints its message and exits non-zero."""


class UldError(Exception):
    """A problem the user can fix; the message is one sentence saying what is wrong and what to do."""
