"""The one kind of error that means "what you gave is wrong", not "the program is wrong".

The ``dgr2`` command prints a :class:`UserError` as one line on stderr and exits 2; anything else is a
bug and keeps its traceback. Each layer raises its own subclass (a checkpoint, a data folder, a resume
file), so the message names the file or flag and what to do.
"""


class UserError(ValueError):
    """A user's mistake: a bad path, file, reference or flag value. The message says what and how to fix it."""
