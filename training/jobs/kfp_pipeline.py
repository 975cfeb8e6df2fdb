"""``homerec retrain`` and ``homerec sweep`` as Kubeflow Pipelines (KFP v2), optional extra
``kfp`` (``pip install -e ".[kfp]"``).

Every task is a thin wrapper over the function the command line runs —
:func:`training.jobs.retrain.run_step` for one retraining step,
:func:`training.jobs.sweep.run_trial` and :func:`training.jobs.sweep.register_best`
for the sweep — so there is one implementation.
Tasks pass the data directory as a string parameter: on one machine (``kfp.local``) it is
a shared filesystem path; on a cluster it must be a volume mounted at that path in every
task (e.g. a ReadWriteMany PVC, ``kfp-kubernetes``' ``mount_pvc``), with the Feast online
store (Redis via ``HOMEREC_ONLINE_STORE=redis`` in the image's environment) reachable from
the pods. ``settings_json`` carries extra ``Settings`` fields (e.g. ``{"test_days": 4}``).

The retrain pipeline runs ``window`` then ``features`` once, then per shelf (unrolled at
compile time from the shelves file, so shelves run in parallel on a cluster)
``training_set -> train -> evaluate -> gate -> push``. Step records make every task
idempotent (a retried or re-run task skips finished work), so KFP's own caching is off.
The sweep pipeline fans the grid out with ``dsl.ParallelFor`` and registers the best.
Components run in ``image``, which must contain homerec with the ``kfp`` extra.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.jobs.retrain import RUN_STEPS, SHELF_STEPS

DEFAULT_IMAGE = "homerec:latest"


def retrain_step(
    step: str, data_dir: str, as_of: str, shelf: str, force: bool, settings_json: str
) -> str:
    """One retraining step (KFP component body): its result as JSON."""
    import json
    import logging
    import os

    from training.core.settings import Settings
    from training.jobs.retrain import run_step

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(**(json.loads(settings_json) | {"data_dir": data_dir}))
    result = run_step(settings, step, as_of or None, shelf or None, force)
    return json.dumps(result, default=str)


def sweep_trial(data_dir: str, as_of: str, shelf: str, params: dict, settings_json: str) -> dict:
    """One grid point of a sweep (KFP component body): the trial record."""
    import json
    import logging
    import os

    from training.core.settings import Settings
    from training.jobs.sweep import run_trial

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(**(json.loads(settings_json) | {"data_dir": data_dir}))
    return run_trial(settings, shelf, params, as_of or None)


def sweep_best(data_dir: str, as_of: str, shelf: str, trials: list, settings_json: str) -> str:
    """Register the best trial as the shelf's candidate (KFP component body)."""
    import json
    import logging
    import os

    from training.core.settings import Settings
    from training.jobs.sweep import register_best

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(**(json.loads(settings_json) | {"data_dir": data_dir}))
    return json.dumps(register_best(settings, shelf, trials, as_of or None), default=str)


def _component(function: Any, image: str) -> Any:
    from kfp import dsl

    return dsl.component(function, base_image=image, install_kfp_package=False)


def _task(component: Any, name: str, after: Any = None, **arguments: Any) -> Any:
    task = component(**arguments)
    task.set_display_name(name)
    task.set_caching_options(False)
    if after is not None:
        task.after(after)
    return task


def retrain_pipeline(shelves: Sequence[str], image: str = DEFAULT_IMAGE) -> Any:
    """The retraining pipeline for ``shelves`` (a KFP pipeline function)."""
    from kfp import dsl

    step = _component(retrain_step, image)

    @dsl.pipeline(name="homerec-retrain", description="world -> features -> train -> gate -> push")
    def homerec_retrain(
        data_dir: str, as_of: str = "", force: bool = False, settings_json: str = "{}"
    ) -> None:
        common = {"data_dir": data_dir, "as_of": as_of, "force": force}
        common["settings_json"] = settings_json
        previous = None
        for name in RUN_STEPS:
            previous = _task(step, name, previous, step=name, shelf="", **common)
        run_ready = previous
        for shelf in shelves:
            previous = run_ready
            for name in SHELF_STEPS:
                previous = _task(
                    step, f"{name} {shelf}", previous, step=name, shelf=shelf, **common
                )

    return homerec_retrain


def sweep_pipeline(grid: list[dict[str, Any]], image: str = DEFAULT_IMAGE) -> Any:
    """The sweep pipeline: one parallel task per grid point, then the best registered."""
    from kfp import dsl

    step = _component(retrain_step, image)
    trial = _component(sweep_trial, image)
    best = _component(sweep_best, image)

    @dsl.pipeline(name="homerec-sweep", description="grid of rankers; best is the candidate")
    def homerec_sweep(data_dir: str, shelf: str, as_of: str = "", settings_json: str = "{}"):
        common = {"data_dir": data_dir, "as_of": as_of, "settings_json": settings_json}
        previous = None
        for name in RUN_STEPS:
            previous = _task(step, name, previous, step=name, shelf="", force=False, **common)
        built = _task(
            step, "training_set", previous, step="training_set", shelf=shelf, force=False, **common
        )
        with dsl.ParallelFor(items=grid) as params:
            fitted = _task(trial, "trial", built, shelf=shelf, params=params, **common)
        trials = dsl.Collected(fitted.output)
        _task(best, "register best", None, shelf=shelf, trials=trials, **common)

    return homerec_sweep


def compile_pipeline(
    output: Path,
    shelves: Sequence[str],
    image: str = DEFAULT_IMAGE,
    grid: list[dict[str, Any]] | None = None,
) -> Path:
    """Write the retrain pipeline (or, given a ``grid``, the sweep pipeline) as KFP YAML,
    atomically."""
    from kfp import compiler

    from training.core.atomic_io import atomic_write_text

    pipeline = sweep_pipeline(grid, image) if grid is not None else retrain_pipeline(shelves, image)
    output.parent.mkdir(parents=True, exist_ok=True)
    staged = output.with_name(f".{output.name}.compiling.yaml")
    compiler.Compiler().compile(pipeline, str(staged))
    atomic_write_text(output, staged.read_text())
    staged.unlink()
    return output
