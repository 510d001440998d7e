"""Errors a user can act on, and a terminal that reads cleanly: every failure of `cflab` is one
line naming the key or path at fault, exit 2 (1 only for a data limit), a traceback only with
--debug; bad configs fail before Prefect starts and leave no run folder; the temporary Prefect
server dies with cflab, even on kill -9; progress bars own their lines."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from counterfactual_lab.flows.cli import EXIT_OVER_LIMIT, EXIT_USAGE, main
from cli_runs import REPO, assert_one_line, cflab, env_without_prefect_api


@pytest.fixture(scope="module")
def small_config(tmp_path_factory, tiny_models):
    from audit_runs import audit_home, write_config

    inputs = audit_home(tmp_path_factory, tiny_models)

    def make(path: Path, out: Path, **sections) -> str:
        return write_config(path, inputs, str(out), generation={"seeds_per_target": 1, "batch_size": 8, **sections.pop("generation", {})},
                            **sections)

    return make


# ---- bad configs: before Prefect, one line, no run folder ----


def test_a_params_typo_exits_2_within_seconds_with_one_line_and_no_run_folder(small_config, tmp_path):
    out = tmp_path / "out"
    config = small_config(tmp_path / "typo.yaml", out, generation={"params": {"strenght": 0.5}})
    started = time.perf_counter()
    result = cflab("audit", "--config", config, env=env_without_prefect_api(), timeout=120)
    elapsed = time.perf_counter() - started
    assert result.returncode == EXIT_USAGE
    assert_one_line(result.stderr, "generation.params.strenght is not understood by method 'img2img'", "did you mean 'strength'")
    assert elapsed < 5.0, f"took {elapsed:.1f} s"
    assert not out.exists()


@pytest.mark.parametrize("change, words", [
    ({"audit": {"labels": []}}, ["audit.labels: List should have at least 2 items"]),
    ({"generation": {"steps": 1}}, ["generation.steps 1 with params.strength 0.6 runs", "0 denoising steps"]),
    ({"generation": {"guidance_scale": float("inf")}}, ["generation.guidance_scale: Input should be a finite number"]),
], ids=["no-labels", "zero-denoising-steps", "infinite-guidance"])
def test_a_config_that_cannot_run_exits_2_with_one_line_and_no_run_folder(small_config, tmp_path, capsys, change, words):
    out = tmp_path / "out"
    config = small_config(tmp_path / "bad.yaml", out, **change)
    capsys.readouterr()
    assert main(["audit", "--config", config]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert_one_line(captured.err, *words)
    assert captured.out == "" and not out.exists()


def test_a_yaml_syntax_error_names_the_line(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("dataset: {uri: ./d}\ngeneration:\n  steps: [4\n")
    assert main(["generate", "--config", str(config)]) == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, f"config {config} is not valid YAML: line 4, column 1")


def test_a_remote_code_model_exits_2_with_one_line_before_anything_runs(small_config, tmp_path, capsys):
    model = tmp_path / "remote-code-clip"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * 8)
    (model / "config.json").write_text('{"model_type": "clip", "auto_map": {"AutoModel": "modeling.Evil"}}')
    out = tmp_path / "out"
    config = small_config(tmp_path / "remote.yaml", out, audit={"model": str(model)})
    assert main(["audit", "--config", config]) == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, f"model {model} needs custom code (config.json has an auto_map)")
    assert not out.exists()


# ---- any error: one line, exit 2; the traceback with --debug ----


def test_an_unexpected_error_is_one_line_and_the_traceback_comes_with_debug(monkeypatch, capsys, tmp_path):
    import counterfactual_lab.flows.cli as cli

    def boom(args):
        raise RuntimeError("something nobody planned for\nsecond line")

    monkeypatch.setattr(cli, "cmd_report", boom)
    assert main(["report", str(tmp_path)]) == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, "RuntimeError: something nobody planned for", "--debug")
    assert main(["report", str(tmp_path), "--debug"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("cflab: error: RuntimeError")
    assert main(["--debug", "report", str(tmp_path)]) == EXIT_USAGE  # before the subcommand too
    assert "Traceback" in capsys.readouterr().err


def test_a_full_disk_names_the_file_that_failed(sample_dataset, tmp_path, monkeypatch, capsys):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    out = tmp_path / "out"
    assert main(["validate", str(sample_dataset), "--out", str(out)]) == EXIT_USAGE
    line = assert_one_line(capsys.readouterr().err, "No space left on device: ")
    assert line.endswith(str(out / "quarantine.parquet")), line
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temp file left behind"


@pytest.mark.s3
def test_an_s3_permission_error_names_the_object(s3_bucket, monkeypatch):
    """s3fs says "Access Denied" without the key; the storage layer adds the URI."""
    import s3fs

    from counterfactual_lab.flows.cli import describe_error
    from counterfactual_lab.storage.files import write_bytes_atomic

    def denied(self, path, data, **kwargs):
        raise PermissionError("Access Denied")

    monkeypatch.setattr(s3fs.S3FileSystem, "_pipe_file", denied, raising=False)
    monkeypatch.setattr(s3fs.S3FileSystem, "pipe_file", denied)
    uri = f"s3://{s3_bucket}/out/run/manifest.json"
    with pytest.raises(PermissionError) as raised:
        write_bytes_atomic(uri, b"{}")
    assert describe_error(raised.value) == f"Access Denied: {uri}"


# ---- errors raised inside the flow, and the console ----


@pytest.mark.slow
@pytest.mark.prefect
def test_an_error_inside_the_flow_is_one_line_without_prefect_tracebacks(prefect_server, small_config, tmp_path_factory, tmp_path):
    """An audit over runtime.max_invalid_fraction fails inside the flow: exit 1 (a data limit), one line."""
    import pyarrow as pa
    import pyarrow.parquet as pq


    source = next(Path(tmp_path_factory.getbasetemp(), "audit-home", "sample-dataset").glob("*.parquet"))
    rows = pq.read_table(source).to_pylist()
    for row in rows[:3]:
        row["image"] = {"bytes": b"not an image", "path": row["image"]["path"]}
    (tmp_path / "bad").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(source)), tmp_path / "bad" / "part-0.parquet")
    config = small_config(tmp_path / "bad.yaml", tmp_path / "out", dataset={"name": "bad", "uri": str(tmp_path / "bad")})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = cflab("audit", "--config", config, env=env)
    assert result.returncode == EXIT_OVER_LIMIT, result.stderr
    line = assert_one_line(result.stderr, "3 of 8 rows (37.5%) were quarantined", "runtime.max_invalid_fraction")
    assert "quarantine.parquet" in line
    assert "Finished in state" not in result.stderr and "Task run failed" not in result.stderr


@pytest.mark.slow
@pytest.mark.prefect
def test_progress_bars_own_their_lines_and_no_torchvision_warning(prefect_server, small_config, tmp_path):
    out = tmp_path / "out"
    config = small_config(tmp_path / "audit.yaml", out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = cflab("audit", "--config", config, "--verbose", env=env)  # INFO lines arrive while the bar runs
    assert result.returncode == 0, result.stderr
    segments = re.split(r"[\r\n]", result.stderr)
    bars = [s for s in segments if re.search(r"generate:\s+\d+%\|", s)]
    logs = [s for s in segments if re.search(r"\d\d:\d\d:\d\d \| (INFO|WARNING|ERROR)", s)]
    assert bars and logs, "the run should show a progress bar and (with --verbose) log lines"
    mixed = [s for s in segments if s in bars and re.search(r"\| (INFO|WARNING|ERROR) +\|", s)]
    assert not mixed, f"a log record shares a line with a progress bar: {mixed[:2]}"
    assert "requires torchvision" not in result.stderr
    assert "Error logging to API" not in result.stderr


def test_the_console_handler_keeps_engine_failure_reports_and_info_off_the_quiet_console(capsys):
    from counterfactual_lab.flows.console import QUIET, configure_console

    handler = configure_console(QUIET)
    try:
        import prefect

        engine_file = os.path.join(os.path.dirname(prefect.__file__), "task_engine.py")

        def record(level, name, pathname, msg, exc_info=None):
            return logging.LogRecord(name, level, pathname, 1, msg, None, exc_info)

        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
        for rec in (record(logging.ERROR, "prefect.task_runs", engine_file, "Task run failed with exception", exc_info),
                    record(logging.INFO, "prefect.task_runs", __file__, "Finished in state Completed()")):
            if rec.levelno >= handler.level:
                handler.emit(rec)
        handler.emit(record(logging.WARNING, "prefect.flow_runs", __file__, "2 cached batch(es) run again", exc_info))
    finally:
        configure_console("verbose")
    err = capsys.readouterr().err
    assert "Task run failed" not in err and "Finished in state" not in err
    assert "2 cached batch(es) run again" in err and "Traceback" not in err and err.count("\n") == 1


# ---- the temporary Prefect server ----


def test_the_startup_timeout_default_is_raised_and_the_environment_wins(monkeypatch):
    from counterfactual_lab.flows.settings import OFFLINE_DEFAULTS, STARTUP_TIMEOUT_SECONDS, apply_offline_defaults
    from counterfactual_lab.flows.temporary_server import startup_timeout_seconds

    assert STARTUP_TIMEOUT_SECONDS >= 120
    environ: dict[str, str] = {}
    apply_offline_defaults(environ)
    assert environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == str(STARTUP_TIMEOUT_SECONDS)
    environ = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
    apply_offline_defaults(environ)
    assert environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "300"
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    assert startup_timeout_seconds() == 300.0
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    assert startup_timeout_seconds() == float(STARTUP_TIMEOUT_SECONDS)
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in OFFLINE_DEFAULTS


@pytest.mark.slow
def test_the_temporary_server_dies_with_cflab_even_after_kill_9(small_config, tmp_path):
    psutil = pytest.importorskip("psutil")
    config = small_config(tmp_path / "audit.yaml", tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-m", "counterfactual_lab.flows.cli", "audit", "--config", config],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=env_without_prefect_api())
    try:
        said = []
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            said.append(line)
            if "Prefect server ready" in line or not line:
                break
        assert "Prefect server ready" in said[-1], "".join(said)
        assert "starting a temporary Prefect server" in "".join(said), "cflab says what it is doing"
        servers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if "counterfactual_lab.flows.server_process" in " ".join(c.cmdline())]
        assert len(servers) == 1, "cflab should run exactly one temporary server"
        server = servers[0]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs([server], timeout=30)
        assert not alive, f"the temporary Prefect server (pid {server.pid}) outlived cflab"
    finally:
        if proc.poll() is None:
            proc.kill()
