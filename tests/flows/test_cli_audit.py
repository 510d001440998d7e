"""``cflab audit``, ``cflab generate`` and ``cflab report`` in-process (``main(argv)``), on a real Prefect server."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest

from counterfactual_lab.flows.cli import EXIT_OK, EXIT_USAGE, main
from counterfactual_lab.runs.publisher import MANIFEST_NAME, REPORT_NAME
from audit_runs import audit_home, write_config

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


def run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit code, stdout) of ``cflab ARGV``."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_models) -> str:
    inputs = audit_home(tmp_path_factory, tiny_models)
    # one seed per target: 24 work items (per row a reconstruction, a counterfactual, a control), 3 batches
    return write_config(
        tmp_path_factory.mktemp("cli-config") / "audit.yaml", inputs, "./unused",
        generation={"seeds_per_target": 1, "batch_size": 8},
    )


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-out")


@pytest.fixture(scope="module")
def audited(prefect_server, config, out) -> tuple[int, str]:
    return run_cli(["audit", "--config", config, "--out", str(out)])


def test_audit_prints_the_report_path_and_exits_0(audited, out):
    code, stdout = audited
    assert code == EXIT_OK
    lines = dict(line.split(": ", 1) for line in stdout.strip().splitlines())
    run_dir = Path(lines["run"])
    assert run_dir.parent == out
    assert lines["report"] == str(run_dir / REPORT_NAME)
    assert Path(lines["report"]).is_file() and (run_dir / MANIFEST_NAME).is_file()


def test_report_prints_the_headline_metrics(audited, capsys):
    run_uri = dict(line.split(": ", 1) for line in audited[1].strip().splitlines())["run"]
    code, stdout = run_cli(["report", run_uri])
    assert code == EXIT_OK
    assert stdout.startswith(f"run {Path(run_uri).name}")
    assert "tiny random-weight test models" in stdout
    assert "Headline findings:" in stdout and "Headline metrics (95% bootstrap interval):" in stdout
    assert "flip_rate" in stdout
    assert f"Report: {run_uri}/{REPORT_NAME}" in stdout
    assert capsys.readouterr().err == ""


def test_report_on_an_incomplete_run_exits_2_with_one_line(audited, tmp_path, capsys):
    run_uri = dict(line.split(": ", 1) for line in audited[1].strip().splitlines())["run"]
    interrupted = tmp_path / Path(run_uri).name
    shutil.copytree(run_uri, interrupted)
    (interrupted / MANIFEST_NAME).unlink()
    capsys.readouterr()
    code, stdout = run_cli(["report", str(interrupted)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and stdout == ""
    assert err.count("\n") == 1 and err.startswith("cflab: error: ")
    assert "incomplete" in err and str(interrupted) in err


def test_audit_with_a_missing_config_exits_2_with_one_line_and_starts_no_flow(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    capsys.readouterr()
    code, stdout = run_cli(["audit", "--config", str(missing)])
    captured = capsys.readouterr()
    assert code == EXIT_USAGE and stdout == ""
    assert captured.err == f"cflab: error: config {missing} does not exist\n"


def test_audit_with_a_value_outside_the_vocabulary_exits_2_naming_it(tiny_models, tmp_path_factory, tmp_path, capsys):
    inputs = audit_home(tmp_path_factory, tiny_models)
    config = write_config(tmp_path / "bad.yaml", inputs, str(tmp_path / "out"), attributes={"gender": ["robot"]})
    capsys.readouterr()
    code, _ = run_cli(["audit", "--config", config])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and "attributes.gender: 'robot' is not in the vocabulary" in err


def test_generate_writes_counterfactuals_and_manifest(prefect_server, audited, config, out):
    code, stdout = run_cli(["generate", "--config", config, "--out", str(out)])
    assert code == EXIT_OK
    run_dir = Path(stdout.strip().removeprefix("run: "))
    assert run_dir.parent == out and "-generate-" in run_dir.name
    assert (run_dir / "counterfactuals.parquet").is_file() and (run_dir / MANIFEST_NAME).is_file()
    assert not (run_dir / "predictions.parquet").exists() and not (run_dir / "metrics.parquet").exists()
    code, report = run_cli(["report", str(run_dir)])
    assert code == EXIT_OK and "No metrics in this run." in report


def test_a_run_over_the_invalid_limit_exits_1_with_one_line(tiny_models, tmp_path_factory, tmp_path, capsys, monkeypatch):
    """Exit 1 means "the data failed a limit you set", as for ``cflab validate``; 2 stays for usage errors."""
    import counterfactual_lab.flows.cli as cli
    from counterfactual_lab.errors import DataOverLimit

    config = write_config(tmp_path / "audit.yaml", audit_home(tmp_path_factory, tiny_models), str(tmp_path / "out"))

    def over_limit(*args, **kwargs):
        raise DataOverLimit("3 of 8 rows (37.5%) were quarantined, over runtime.max_invalid_fraction=5.0%")

    monkeypatch.setattr(cli, "_run_audit_flow", over_limit)  # the flow's own raise is tested in test_audit_flow
    assert cli.main(["audit", "--config", config]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cflab: error: 3 of 8 rows (37.5%) were quarantined, over runtime.max_invalid_fraction=5.0%"]
