"""The one kind of error that means "what you gave is wrong", not "the program is wrong".

The ``dgr2`` command prints a :class:`UserError` as one line on stderr and exits 2; anything else is a
bug and keeps its traceback. Each layer raises its own subclass (a checkpoint, a data folder, a resume
file), so the message names the file or flag and what to do.
"""

import sys


class UserError(ValueError):
    """A user's mistake: a bad path, file, reference or flag value. The message says what and how to fix it."""


def print_user_error(prog: str, error: UserError) -> int:
    """Prints ``error`` as the one line a user sees from ``prog`` and returns the exit status for it."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 2
