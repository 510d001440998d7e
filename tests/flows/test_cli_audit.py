"""``cflab audit``, ``cflab generate``, ``cflab report`` and ``cflab compare`` in-process (``main(argv)``), on a
real Prefect server; and the audit's report.html opened in a real browser as a reader opens it."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest

from counterfactual_lab.flows.cli import EXIT_OK, EXIT_USAGE, main
from counterfactual_lab.runs.publisher import MANIFEST_NAME, REPORT_NAME
from audit_runs import audit_home, write_config
from browser import artifact_dir
from report_pages import inside_first_screen, open_report, save_measurements

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


# ---- the report in a browser, and two runs compared -------------------------------------------------


def run_of(audited: tuple[int, str]) -> str:
    return dict(line.split(": ", 1) for line in audited[1].strip().splitlines())["run"]


@pytest.fixture(scope="module")
def other_seed(prefect_server, tiny_models, tmp_path_factory, audited, out) -> str:
    """The same audit with another generator seed, into the same output folder: its run id differs."""
    inputs = audit_home(tmp_path_factory, tiny_models)
    config = write_config(tmp_path_factory.mktemp("cli-config-seed") / "audit.yaml", inputs, "./unused",
                          generation={"seeds_per_target": 1, "batch_size": 8, "seed": 1})
    code, stdout = run_cli(["audit", "--config", config, "--out", str(out)])
    assert code == EXIT_OK
    return dict(line.split(": ", 1) for line in stdout.strip().splitlines())["run"]


@pytest.mark.browser
def test_the_audits_report_answers_on_the_first_screen_in_chromium(chromium, audited, tmp_path_factory):
    report = Path(run_of(audited)) / REPORT_NAME
    artifacts = artifact_dir(tmp_path_factory)
    measured = open_report(chromium, report, artifacts / "report-audit.png")
    save_measurements(artifacts, "report-audit", measured, report.stat().st_size)
    assert measured["errors"] == [] and measured["outside_requests"] == []
    assert measured["first_element"] == "models"
    assert inside_first_screen(measured["verdict"]) and inside_first_screen(measured["forest"]), measured
    assert measured["opened_one_by_one"] and measured["expanded"] and measured["sorted"]
    assert measured["images"] > 0


def test_compare_finds_no_change_between_two_runs_with_other_seeds(audited, other_seed, tmp_path, capsys):
    first = run_of(audited)
    assert first != other_seed
    code, stdout = run_cli(["compare", first, other_seed, "--out", str(tmp_path / "compare.html")])
    assert code == EXIT_OK, capsys.readouterr().err
    assert "No change beyond intervals" in stdout and "WARNING" not in stdout, stdout
    assert "note: What the generation stage did differs: seed 0 vs 1." in stdout
    assert "paired over shared sources" in stdout and (tmp_path / "compare.html").is_file()


def test_compare_history_charts_the_output_folders_runs(audited, other_seed, out):
    code, stdout = run_cli(["compare", "--history", str(out)])
    assert code == EXIT_OK
    assert Path(run_of(audited)).name in stdout and Path(other_seed).name in stdout
    assert f"history: {out / 'history.html'}" in stdout and (out / "history.html").is_file()
