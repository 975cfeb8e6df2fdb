"""Names and defaults shared before any heavy module loads.

Kept free of imports: the command line reads them for ``--help`` and option parsing, and
the Feast declarations in ``feature_repo/`` import nothing of homerec but this module.
"""

DEFAULT_LISTENERS = 3000
"""Listeners of the default synthetic world (``homerec world generate``, ``demo``)."""
DEFAULT_DAYS = 75
"""Days of the default synthetic world."""
DEFAULT_SEED = 7
"""Seed of the default synthetic world."""
DEFAULT_DEMO_TRAFFIC = 1000
"""Home pages ``homerec demo`` serves at the end, so ``homerec drift`` has served rows."""

PRODUCTION = "production"
"""The registry alias serving loads: a blessed (or overridden) version."""
CANDIDATE = "candidate"
"""The registry alias of the latest trained version awaiting the gate."""
ALIASES = (PRODUCTION, CANDIDATE)

CONTENT_TYPES: tuple[str, ...] = ("show", "playlist", "album", "artist")
"""Card types of the Home page. ``show`` is a podcast; the others are music."""

SHORT_WINDOW_DAYS = 7
"""The short look-back window of the feature tables (days)."""
LONG_WINDOW_DAYS = 28
"""The long look-back window of the feature tables (days): no feature looks further back."""
DAYPARTS: dict[str, tuple[int, int]] = {
    "night": (0, 6),
    "morning": (6, 12),
    "afternoon": (12, 18),
    "evening": (18, 24),
}
"""Local hour ranges [from, to) of the dayparts used for time-of-day habits."""
