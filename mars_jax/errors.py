"""The one exception type for mistakes a user can make (bad file, config key, argument)."""


class MarsError(Exception):
    """A user-facing error; its message names the file and line, or the key, at fault.

    The CLI prints it on one line and exits with status 2, without a traceback.
    """
