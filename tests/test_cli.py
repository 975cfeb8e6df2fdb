"""The ``homerec`` command line: the commands exist and ``evaluate --json`` prints one
JSON object on stdout (logs go to stderr), on a trained world."""

import json
import os
import socket
import subprocess
import sys

from typer.testing import CliRunner

from tests.conftest import REPO_ROOT, TrainedWorld, free_port
from training.cli.main import app

COMMANDS = (
    "world",
    "features",
    "train",
    "evaluate",
    "demo",
    "gate",
    "retrain",
    "sweep",
    "pipeline",
)


def strict_json(text: str):
    """Parse ``text`` as exactly one JSON value, refusing NaN and Infinity."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_help_lists_every_command():
    """`homerec --help` lists the pipeline's commands."""
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in COMMANDS:
        assert command in result.stdout, f"{command} missing from --help"


HEAVY = ("feast", "xgboost", "pandas", "scipy", "pyarrow", "sklearn")
"""Libraries no ``--help`` may import: they cost seconds before anything is printed."""


def test_help_of_every_command_imports_no_heavy_library():
    """``homerec [COMMAND] --help`` in a fresh process: the commands import what they use
    when they run, so help and option parsing never load Feast, XGBoost or pandas."""
    script = (
        "import sys\n"
        "from training.cli.main import run\n"
        "sys.argv = ['homerec', *sys.argv[1:]]\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    for command in ([], ["models"], ["drift"], ["features"], ["world", "generate"]):
        done = subprocess.run(
            [sys.executable, "-c", script, *command, "--help"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "Usage" in done.stdout, done.stderr
        assert done.stdout.strip().endswith("LOADED []"), (command, done.stdout[-200:])


def test_an_unknown_shelf_is_one_line_and_exit_2_and_overwrites_nothing(tmp_path):
    """train, evaluate and gate name the unknown shelf in one line (no traceback), exit 2,
    and evaluate leaves the previous report as it was."""
    report = tmp_path / "data" / "evaluation" / "latest.json"
    report.parent.mkdir(parents=True)
    report.write_text('{"shelves": {"shortcuts": {}}}\n')
    for command in ("train", "evaluate", "gate"):
        done = subprocess.run(
            [sys.executable, "-c", "from training.cli.main import run; run()"]
            + ["--data-dir", str(tmp_path / "data"), command, "--shelf", "nope"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, (command, done.stderr[-500:])
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "unknown shelves ['nope']" in errors[0], done.stderr
        assert "Traceback" not in done.stderr
    assert report.read_text() == '{"shelves": {"shortcuts": {}}}\n'


def test_version_is_printed():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("homerec 0.")


def test_evaluate_json_prints_exactly_one_json_object(trained_world: TrainedWorld):
    """`homerec --data-dir D evaluate --json` prints one strict JSON object on stdout, the
    report of every shelf, equal to evaluate_all's; nothing else shares stdout."""
    data_dir = str(trained_world.settings.data_dir)
    result = CliRunner().invoke(app, ["--data-dir", data_dir, "evaluate", "--json"])
    assert result.exit_code == 0, result.output
    report = strict_json(result.stdout)
    assert list(report) == ["shelves"]
    assert list(report["shelves"]) == list(trained_world.report["shelves"])
    assert report == json.loads(json.dumps(trained_world.report))


def test_evaluate_one_shelf_as_a_table(trained_world: TrainedWorld):
    """`evaluate --shelf shortcuts` prints the table of that shelf only."""
    data_dir = str(trained_world.settings.data_dir)
    result = CliRunner().invoke(app, ["--data-dir", data_dir, "evaluate", "--shelf", "shortcuts"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["shelf", "model", "baseline", "oracle"]
    assert [line.split()[0] for line in lines[2:]] == ["shortcuts"]


def test_evaluate_json_in_a_real_process_keeps_logs_off_stdout(trained_world: TrainedWorld):
    """Run as a process, where the CLI configures logging itself: even ``--verbose`` logs
    go to stderr and stdout is still exactly one JSON object, so `homerec evaluate --json |
    jq` works."""
    command = [sys.executable, "-c", "from training.cli.main import app; app()"]
    args = ["--data-dir", str(trained_world.settings.data_dir), "--verbose", "evaluate", "--json"]
    result = subprocess.run(
        command + args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert list(strict_json(result.stdout)) == ["shelves"]
    assert "loaded ranker" in result.stderr, "the logs went somewhere else"


def test_demo_refuses_a_world_too_short_for_its_windows_before_writing(tmp_path):
    """A demo world shorter than warm-up + train + valid + test (+ label horizons) is a
    user error (exit 2, one line naming the windows), found before any file is written."""
    data_dir = tmp_path / "data"
    result = CliRunner().invoke(
        app, ["--data-dir", str(data_dir), "demo", "--listeners", "50", "--days", "40"]
    )
    assert result.exit_code == 2, result.output
    assert "too short: warm-up 28d" in result.stderr
    assert not data_dir.exists()


def _homerec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from training.cli.main import run; run()", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def test_user_mistakes_are_one_line_naming_the_fix_and_exit_2(small_world_store, tmp_path):
    """Each mistake of the error model (unknown listener, store unreachable, a date that is
    not ISO 8601, a bad setting, no model, no world, a port in use) ends in exactly one
    line on stderr that names it, exit 2, no traceback; ``--verbose`` adds the traceback."""
    data = ["--data-dir", str(small_world_store.data_dir)]
    empty = ["--data-dir", str(tmp_path / "empty")]
    closed_redis = {"HOMEREC_REDIS_CONNECTION": f"127.0.0.1:{free_port()}"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        mistakes = [
            ([*data, "features", "sample", "--listener", "NOBODY"], {}, "unknown listener"),
            (
                [*data, "--online-store", "redis", "features", "sample"],
                closed_redis,
                "cannot reach the Redis online store",
            ),
            ([*data, "retrain", "--as-of", "03/01/2026"], {}, "is not an ISO 8601 date"),
            ([*data, "--online-store", "bogus", "train"], {}, "invalid setting (online_store"),
            ([*data, "evaluate"], {}, "has no registered model"),
            ([*empty, "features", "build"], {}, "no world at"),
            ([*data, "serve", "--port", port], {}, f"cannot listen on 127.0.0.1:{port}"),
        ]
        for args, env, message in mistakes:
            done = _homerec(*args, env=env)
            assert done.returncode == 2, (args, done.stderr[-800:])
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (args, done.stderr)
            assert message in lines[0], (args, lines[0])
    assert not (small_world_store.data_dir / "evaluation").exists(), "a refused evaluate wrote"
    verbose = _homerec(*data, "--verbose", "features", "sample", "--listener", "NOBODY")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].startswith("error: unknown listener")


def test_homerec_works_from_any_working_directory(tmp_path):
    """The feature repository is found from homerec's own location, not the working
    directory: ``features apply`` outside the checkout registers every feature view."""
    done = subprocess.run(
        [sys.executable, "-c", "from training.cli.main import run; run()"]
        + ["--data-dir", "data", "features", "apply"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-800:]
    assert "applied 7 feature views" in done.stderr
    assert (tmp_path / "data" / "feast" / "registry.db").is_file()
