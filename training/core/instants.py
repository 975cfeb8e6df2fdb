"""Instants given on the command line (``--as-of``, ``--since``, ``--until``): ISO 8601 only."""

from datetime import UTC, datetime

from training.core.errors import UserError


class BadInstantError(UserError, ValueError):
    """An option's value is not an ISO 8601 date or date-time."""


def parse_instant(text: str, option: str) -> datetime:
    """``text`` as an aware UTC datetime (a date is its midnight; no offset means UTC).

    Only ISO 8601 is read: ``03/01/2026`` is the 1st of March in one country and the 3rd
    of January in another, so it is refused rather than guessed.
    """
    try:
        value = datetime.fromisoformat(text)
    except ValueError as error:
        raise BadInstantError(
            f"{option} {text!r} is not an ISO 8601 date or time: write YYYY-MM-DD or "
            "YYYY-MM-DDTHH:MM:SS[+HH:MM] (UTC when no offset is given)"
        ) from error
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
