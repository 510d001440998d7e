"""``cflab review``: bad input is one line, exit 2, nothing written; labels come in from a CSV or a
Label Studio export; ``--apply`` puts the figures into the run, its report and ``cflab report``."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import polars as pl
import pytest
from cli_runs import assert_one_line
from published_runs import publish
from reviewed_runs import members, publish_reviewable

from counterfactual_lab.flows.cli import main


@pytest.fixture
def run_uri(tmp_path) -> str:
    return publish_reviewable(tmp_path / "out")


def files_under(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def failing(capsys, *args: str) -> str:
    assert main(["review", *args]) == 2
    return assert_one_line(capsys.readouterr().err)


def test_bad_input_is_one_line_and_writes_nothing(run_uri, tmp_path, capsys):
    assert "no run at" in failing(capsys, str(tmp_path / "nowhere"), "--reviewer", "ana")
    empty = publish(str(tmp_path / "other")).run_uri  # a run whose counterfactuals hold no images
    before = files_under(Path(empty))
    assert "no counterfactual images to review" in failing(capsys, empty, "--apply")
    assert files_under(Path(empty)) == before

    before = files_under(Path(run_uri))
    csv = tmp_path / "labels.csv"
    cases = {
        "reviewer,set_id,member,target_shown,other_change,mood\nana,set0,cf0-female,yes,none,happy\n": "unknown column(s) 'mood'",
        "reviewer,set_id,member,target_shown,other_change\nana,set0,cf0-female,yes,none\nana,set99,x,yes,none\n": "unknown set 'set99'",
        "reviewer,set_id,member,target_shown,other_change\nana,set0,cf9,yes,none\n": "unknown counterfactual 'cf9'",
        "reviewer,set_id,member,target_shown,other_change\nana,set0,cf0-female,maybe,none\n": "target_shown 'maybe'",
        "reviewer,set_id,member\nana,set0,cf0-female\n": "missing column(s) target_shown, other_change",
    }
    for text, words in cases.items():
        csv.write_text(text)
        assert words in failing(capsys, run_uri, "--import", str(csv)), text
    assert "no labels at" in failing(capsys, run_uri, "--apply")
    assert files_under(Path(run_uri)) == before, "nothing written"

    with socket.socket() as taken:  # a port another server holds
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        assert "cannot listen there" in failing(capsys, run_uri, "--reviewer", "ana", "--port", port)


def test_a_csv_import_then_apply_puts_the_figures_into_the_run_and_its_report(run_uri, tmp_path, capsys):
    rows = ["reviewer,set_id,member,target_shown,other_change,note"]
    for i, (set_id, member) in enumerate(sorted(members(run_uri))):
        for reviewer in ("ana", "bob"):
            answer = "no,none" if (i % 3 == 0 and reviewer == "ana") or set_id == "set2" else "yes,none"
            rows.append(f"{reviewer},{set_id},{member},{answer},")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    assert main(["review", run_uri, "--import", str(tmp_path / "labels.csv")]) == 0
    assert "imported 18 label(s) by ana, bob" in capsys.readouterr().out

    assert main(["review", run_uri, "--apply"]) == 0
    out = capsys.readouterr().out
    assert "reviewed by 2 reviewer(s) (ana, bob)" in out and "Cohen's κ" in out and "Krippendorff's α" in out
    run = Path(run_uri)
    review = pl.read_parquet(run / "review.parquet")
    assert review.height == 9 and set(review["run_id"]) == {"review-run"}
    metrics = pl.read_parquet(run / "metrics.parquet")
    shown = set(metrics.filter(pl.col("stratum") == "review")["metric"])
    assert shown == {"human_validity_rate", "judge_human_agreement", "judge_false_accept_rate",
                     "judge_false_reject_rate", "inter_rater_agreement"}
    assert metrics.filter(pl.col("stratum") != "review").height == 5, "the audit's own rows are kept"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["review"]["reviewers"] == ["ana", "bob"] and manifest["review"]["exclude_rejected"] is False
    assert "set2" in manifest["review"]["rejected_sets"] and manifest["tables"]["review"].endswith("review.parquet")
    html = (run / "report.html").read_text()
    assert html.index('id="people"') < html.index("Headline findings"), "near the top"
    assert "judge vs people: Cohen&#39;s κ" in html

    assert main(["review", run_uri, "--apply"]) == 0  # again: the review rows are replaced, not added
    capsys.readouterr()
    assert pl.read_parquet(run / "metrics.parquet").height == metrics.height
    assert main(["report", run_uri]) == 0
    report = capsys.readouterr().out
    assert report.index("People's review: 9 counterfactual(s) reviewed by 2 reviewer(s)") < report.index("Headline findings")


def test_label_studio_round_trip(run_uri, tmp_path, capsys):
    assert main(["review", run_uri, "--export", "label-studio", "--size", "8"]) == 0
    capsys.readouterr()
    folder = Path(run_uri) / "review"
    tasks = json.loads((folder / "label-studio-tasks.json").read_text())
    config = (folder / "label-studio-config.xml").read_text()
    assert len(tasks) == 9 and '<Choices name="target_shown"' in config and 'hotkey="y"' in config
    data = tasks[0]["data"]
    assert data["counterfactual"].startswith("data:image/webp;base64,") and data["cflab_run_id"] == "review-run"
    assert not any("caption" in key or "judge" in key for key in data), "nothing anchors the labeller"
    for number, task in enumerate(tasks):  # what Label Studio's JSON export holds after labelling
        choice = "no" if number % 4 == 0 else "yes"
        task["annotations"] = [{"completed_by": {"id": 3, "email": "ana@example.org"}, "was_cancelled": False,
                                "updated_at": "2026-02-01T10:00:00.000000Z", "result": [
                                    {"from_name": "target_shown", "to_name": "counterfactual", "type": "choices",
                                     "value": {"choices": [choice]}},
                                    {"from_name": "other_change", "to_name": "counterfactual", "type": "choices",
                                     "value": {"choices": ["none"]}},
                                    {"from_name": "note", "to_name": "counterfactual", "type": "textarea",
                                     "value": {"text": [f"task {number}"]}}]},
                               {"completed_by": 7, "was_cancelled": True, "result": []}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    assert main(["review", run_uri, "--import", str(export)]) == 0
    labels = pl.read_parquet(folder / "labels.parquet")
    assert labels.height == 9 and set(labels["reviewer"]) == {"ana@example.org"}
    assert set(zip(labels["set_id"], labels["member"])) == set(members(run_uri))
    assert labels.filter(pl.col("target_shown") == "no").height == 3

    tasks[0]["data"]["cflab_run_id"] = "another-run"
    export.write_text(json.dumps(tasks))
    assert "is from run 'another-run'" in failing(capsys, run_uri, "--import", str(export))
    tasks[0]["data"]["cflab_run_id"] = "review-run"
    tasks[0]["annotations"][0]["result"][0]["from_name"] = "mood"
    export.write_text(json.dumps(tasks))
    assert "unknown field 'mood'" in failing(capsys, run_uri, "--import", str(export))
    assert pl.read_parquet(folder / "labels.parquet").equals(labels), "nothing written"
    assert os.listdir(folder) and not [n for n in os.listdir(folder) if ".tmp-" in n]
