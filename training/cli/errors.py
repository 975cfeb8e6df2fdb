"""How the command line reports errors: one place for every command.

A :class:`~training.core.errors.UserError` (and the few third-party errors that are user
mistakes: an unreachable Redis, a bad setting, a missing file) is printed as one line on
stderr and exits 2; ``--verbose`` logs its traceback first. Commands made of resumable
steps turn any other failure into exit 3. The exit codes are
:class:`training.core.errors.ExitCode`.
"""

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import typer
from typer.core import TyperGroup

from training.core.errors import ExitCode, UserError

logger = logging.getLogger(__name__)


def _redis_message(error: Exception) -> str | None:
    if not type(error).__module__.startswith("redis"):
        return None
    import redis

    if not isinstance(error, redis.exceptions.ConnectionError):
        return None
    return (
        f"cannot reach the Redis online store ({error}): start redis-server there, "
        "point HOMEREC_REDIS_CONNECTION at it, or use --online-store sqlite"
    )


def _settings_message(error: Exception) -> str | None:
    from pydantic import ValidationError

    if not isinstance(error, ValidationError) or error.title != "Settings":
        return None
    problems = "; ".join(
        f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
        for problem in error.errors()
    )
    return f"invalid setting ({problems}): fix the option or its HOMEREC_* variable"


def user_message(error: Exception) -> str | None:
    """The one line to print when ``error`` is a mistake the user can fix, else None."""
    if isinstance(error, UserError | FileNotFoundError):
        return str(error)
    return _redis_message(error) or _settings_message(error)


def _verbose() -> bool:
    """``--verbose`` sets the root logger to DEBUG (see the ``homerec`` callback)."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A user mistake raised in the block: one line on stderr, exit 2 (its traceback is
    logged with ``--verbose``). Anything else propagates unchanged."""
    try:
        yield
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        if _verbose():
            logger.debug("user error", exc_info=error)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(ExitCode.USER_ERROR) from error


@contextlib.contextmanager
def failed_steps(what: str) -> Iterator[None]:
    """For commands made of resumable steps: a user mistake passes on (the root group
    makes it exit 2, as anywhere); any other failure is logged with its traceback and
    exits 3, so a scheduler can tell it from a refusal (exit 1) and re-run to resume."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:
        if user_message(error) is not None:
            raise
        logger.exception("%s failed", what)
        typer.echo(f"error: {what} failed: {error} (re-run to resume)", err=True)
        raise typer.Exit(ExitCode.FAILED) from error


class ReportingGroup(TyperGroup):
    """The root command group: every command, and the settings callback, run inside
    :func:`user_errors`."""

    def invoke(self, ctx: Any) -> Any:  # Any: typer types it with its vendored click Context
        with user_errors():
            return super().invoke(ctx)
