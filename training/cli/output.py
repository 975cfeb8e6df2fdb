"""What the command line shows: homerec's own progress and results, not its libraries'
chatter. Configured once, when a command starts; ``--verbose`` shows everything."""

import logging
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

HOMEREC_PACKAGES = ("training", "serving", "evaluation")
SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The directory holding homerec's packages (the checkout, or site-packages)."""
SHOWN_LIBRARIES = ("uvicorn",)
"""Libraries whose INFO lines a user wants: the server's start line and access log."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def is_homerec_file(filename: str) -> bool:
    """True for a source file of homerec's own packages."""
    try:
        parts = Path(filename).resolve().relative_to(SOURCE_ROOT).parts
    except ValueError:
        return False
    return bool(parts) and parts[0] in HOMEREC_PACKAGES


_show_warning = warnings.showwarning


def _show_homerec_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Show a warning raised in homerec's code; drop those raised inside libraries
    (Feast turns deprecation warnings back on when it is imported, so a filter set here
    would not hold)."""
    if is_homerec_file(filename):
        _show_warning(message, category, filename, lineno, file, line)


def configure_output(verbose: bool) -> None:
    """homerec's loggers at INFO (DEBUG with ``verbose``); other libraries at WARNING, so
    Feast's per-call "Registry cache expired" INFO lines stay out; warnings raised in
    library code are not shown unless ``verbose``. homerec's own warnings always are."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format=LOG_FORMAT, stream=sys.stderr
    )
    for name in (*HOMEREC_PACKAGES, *SHOWN_LIBRARIES):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    warnings.showwarning = _show_warning if verbose else _show_homerec_warning


def logging_config(verbose: bool) -> dict[str, Any]:
    """:func:`configure_output`'s loggers as a ``logging.config.dictConfig`` dict, for
    processes that start unconfigured (``homerec serve --workers N``); its warning filter
    does not carry over."""
    level = "DEBUG" if verbose else "INFO"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"homerec": {"format": LOG_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "homerec",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": "DEBUG" if verbose else "WARNING", "handlers": ["stderr"]},
        "loggers": {name: {"level": level} for name in (*HOMEREC_PACKAGES, *SHOWN_LIBRARIES)},
    }
