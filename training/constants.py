"""Names and defaults the command line needs before any heavy module loads.

Kept free of imports so that ``homerec --help`` and option parsing stay fast; the modules
that own these values import them from here.
"""

DEFAULT_LISTENERS = 3000
"""Listeners of the default synthetic world (``homerec world generate``, ``demo``)."""
DEFAULT_DAYS = 75
"""Days of the default synthetic world."""
DEFAULT_SEED = 7
"""Seed of the default synthetic world."""

PRODUCTION = "production"
"""The registry alias serving loads: a blessed (or overridden) version."""
CANDIDATE = "candidate"
"""The registry alias of the latest trained version awaiting the gate."""
ALIASES = (PRODUCTION, CANDIDATE)
