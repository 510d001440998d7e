"""Issue 17: a file the project did not just write is read only when it is a regular file within
its byte limit. Each surface gets a FIFO, a symlink to ``/dev/zero`` and an oversized (sparse) file
where a file of the run should be, and must end in one line and exit 2 within seconds, never hang
or read until memory runs out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_runs import assert_one_line
from counterfactual_lab.flows.cli import EXIT_USAGE, main
from counterfactual_lab.runs.publisher import MANIFEST_MAX_BYTES
from counterfactual_lab.runs.reader import RUN_TABLE_MAX_BYTES
from hang_guard import call_within
from hostile_files import HOSTILE, expected_words, plant
from published_runs import publish

SECONDS = 20


def cflab_within(argv: list[str], fifos: list[Path], capsys) -> tuple[int, str, str]:
    code = call_within(SECONDS, lambda: main(argv), fifos=fifos, what=f"cflab {' '.join(argv)}")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("target", ["run", "output root"])
def test_cflab_report_refuses_a_hostile_manifest_in_one_line(tmp_path, capsys, kind, target):
    run_uri = publish(str(tmp_path)).run_uri
    manifest = plant(Path(run_uri) / "manifest.json", kind, MANIFEST_MAX_BYTES)
    code, out, err = cflab_within(["report", run_uri if target == "run" else str(tmp_path)], [manifest], capsys)
    assert code == EXIT_USAGE
    assert_one_line(err, "manifest.json", *expected_words(kind))


@pytest.mark.parametrize("kind", HOSTILE)
def test_cflab_report_refuses_a_hostile_run_table_in_one_line(tmp_path, capsys, kind):
    run_uri = publish(str(tmp_path)).run_uri
    table = plant(Path(run_uri) / "metrics.parquet", kind, RUN_TABLE_MAX_BYTES)
    code, out, err = cflab_within(["report", run_uri], [table], capsys)
    assert code == EXIT_USAGE
    assert_one_line(err, "metrics.parquet", *expected_words(kind))


def test_a_manifest_nested_200000_deep_is_named_not_a_recursion_error(tmp_path, capsys):
    run_uri = publish(str(tmp_path)).run_uri
    (Path(run_uri) / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    code, out, err = cflab_within(["report", run_uri], [], capsys)
    assert code == EXIT_USAGE
    assert_one_line(err, "manifest.json", "nested deeper than 64 levels")
    assert "RecursionError" not in err


def test_a_manifest_with_a_5000_digit_integer_is_named(tmp_path, capsys):
    run_uri = publish(str(tmp_path)).run_uri
    path = Path(run_uri) / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(manifest).replace('"cache_hits": 3', '"cache_hits": ' + "9" * 5000))
    code, out, err = cflab_within(["report", run_uri], [], capsys)
    assert code == EXIT_USAGE
    assert_one_line(err, "manifest.json", "an integer of 5,000 digits")


def test_a_config_with_a_5000_digit_integer_names_the_key(tmp_path, capsys):
    config = tmp_path / "audit.yaml"
    config.write_text(f"dataset:\n  uri: {tmp_path}\ngeneration:\n  steps: {'9' * 5000}\n")
    code, out, err = cflab_within(["audit", "--config", str(config)], [], capsys)
    assert code == EXIT_USAGE
    assert_one_line(err, "key 'steps'", "5,000 digits")


ESCAPES = "\x1b[2J\x1b]0;owned\x07\r\x08\x9b"


@pytest.mark.parametrize("target", ["run", "output root"])
def test_terminal_escape_codes_in_a_manifest_never_reach_the_terminal(tmp_path, capsys, target):
    """Issue 17: a manifest's strings (a dataset name, a model, a run id) were printed raw by ``cflab report``."""
    run_uri = publish(str(tmp_path)).run_uri
    path = Path(run_uri) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["dataset"]["name"] = f"sample{ESCAPES}"
    manifest["models"]["audit"]["model"] = f"tiny{ESCAPES}clip"
    manifest["run_id"] = f"run-7{ESCAPES}"
    path.write_text(json.dumps(manifest))
    code, out, err = cflab_within(["report", run_uri if target == "run" else str(tmp_path)], [], capsys)
    assert code == 0 and "sample" in out
    assert not [c for c in out + err if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F], repr(out)
    assert "owned" not in out  # the window-title sequence went whole, its text too
