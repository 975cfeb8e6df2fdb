"""Simulated time on the trained world: the stale arm keeps the first date's model, the
retrained arm refits at each date, both scored on that date's own test window."""

from datetime import timedelta

import numpy as np
import pytest

from evaluation.staleness import staleness_study
from tests.conftest import TrainedWorld
from training.features.store import world_window


def test_stale_and_retrained_models_are_scored_on_each_later_window(
    trained_world: TrainedWorld,
) -> None:
    settings = trained_world.settings
    _, end = world_window(settings)
    dates = [end - timedelta(days=4), end]
    rows = staleness_study(settings, dates, ["shortcuts"])
    assert [row.as_of for row in rows] == [date.isoformat() for date in dates]
    first, later = rows
    assert first.stale == first.retrained, "at the first date both arms are the same model"
    assert all(row.trained_at == dates[0].isoformat() for row in rows)
    assert later.test_groups > 0
    for row in rows:
        assert all(np.isfinite([row.stale, row.retrained, row.baseline]))
        assert 0 < row.stale <= 1 and 0 < row.retrained <= 1


def test_dates_must_ascend(trained_world: TrainedWorld) -> None:
    _, end = world_window(trained_world.settings)
    with pytest.raises(ValueError, match="ascending"):
        staleness_study(trained_world.settings, [end, end - timedelta(days=1)])
