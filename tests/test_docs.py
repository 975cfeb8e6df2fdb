"""Tests that the documentation matches the code it describes."""

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_the_architecture_picture_and_tree_are_up_to_date():
    """docs/architecture.svg and the module tree in docs/architecture.md are generated from
    the import-linter layers and the module docstrings; a moved, added or renamed module
    without a regenerated picture fails here."""
    done = subprocess.run(
        [sys.executable, "docs/architecture.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_setting_is_documented():
    """Each ``Settings`` field appears as its ``HOMEREC_*`` variable in the settings
    reference, so a new setting cannot ship undocumented."""
    from training.core.settings import Settings

    reference = (REPO_ROOT / "docs" / "configuration.md").read_text()
    missing = [
        f"HOMEREC_{name.upper()}"
        for name in Settings.model_fields
        if f"`HOMEREC_{name.upper()}`" not in reference
    ]
    assert not missing, f"not in docs/configuration.md: {missing}"
