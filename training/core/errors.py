"""The one error model of homerec, and the exit codes of the ``homerec`` command line.

A mistake the user can fix (bad input, bad configuration, a missing prerequisite such as
a world, a model or a reachable store) raises a :class:`UserError` whose message names
what is wrong and what to do. The command line prints that message as one line on stderr
and exits with :attr:`ExitCode.USER_ERROR`; with ``--verbose`` the traceback is logged
too. Anything else is a bug or a failed step, and keeps its traceback.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit status of every ``homerec`` command (the one table; README links here)."""

    OK = 0
    REFUSED = 1
    """Nothing broke, but the answer is no: a gate refused a version, or drift was found."""
    USER_ERROR = 2
    """A mistake the user can fix: one line on stderr names it and what to do."""
    FAILED = 3
    """A step failed (retrain, sweep, gate, pipeline): re-running resumes where it stopped."""


class UserError(Exception):
    """A mistake the user can fix; its message says what is wrong and what to do."""
