"""Labels made elsewhere: a CSV with the labels' columns, or Label Studio.

**CSV** (``cflab review RUN --import FILE.csv``): the columns of ``labels.parquet``
(:data:`~counterfactual_lab.review.labels.LABELS_SCHEMA`); ``note``, ``answered_at`` (ISO 8601,
default: the import's time) and ``sample_seed`` may be left out.

**Label Studio** (``cflab review RUN --export label-studio``): the sample's counterfactuals as
tasks in Label Studio's JSON import format (a list of ``{"data": {...}}``, one task per
counterfactual, the images embedded as WebP data URIs of at most :data:`EXPORT_MAX_SIDE` px, the
run, set and member in ``data.cflab_*``; no caption and no judge verdict, so nothing anchors the
labeller), and the labeling config that asks the page's questions with the page's keys. The
JSON export of that project (``--import FILE.json``) is read back: per annotation, the
``target_shown`` and ``other_change`` choices and the ``note`` text; the reviewer is the
annotator's email (``labelstudio-<id>`` without one); ``answered_at`` its ``updated_at``.
Cancelled annotations are skipped.

Either file is checked whole before anything is written: an unknown column or Label Studio
field, a set or counterfactual the run does not have, a task of another run, or an answer
outside the vocabularies is one line naming the first bad value and how many there are, and
nothing is written. A valid file is one write (replacing a reviewer's earlier answer on the
same counterfactual).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from counterfactual_lab.errors import UserError
from counterfactual_lab.review.labels import (
    LABELS_SCHEMA,
    OTHER_CHANGE,
    TARGET_SHOWN,
    answer_problem,
    as_labels,
    check_reviewer,
    review_uri,
)
from counterfactual_lab.review.sample import Sample
from counterfactual_lab.review.sets import ReviewSet
from counterfactual_lab.storage.files import join, write_bytes_atomic

REQUIRED_CSV_COLUMNS = ("reviewer", "set_id", "member", "target_shown", "other_change")
OPTIONAL_CSV_COLUMNS = ("note", "answered_at", "sample_seed")
EXPORT_MAX_SIDE = 512
LABEL_STUDIO_TASKS = "label-studio-tasks.json"
LABEL_STUDIO_CONFIG = "label-studio-config.xml"
# The page's keys, so a reviewer moving between the two keeps their habits.
TARGET_KEYS = {"yes": "y", "no": "n", "cant_tell": "c"}
OTHER_KEYS = {value: str(i) for i, value in enumerate(OTHER_CHANGE)}
REFERENCE_ROLES = ("reconstruction", "original", "control")


def question(attribute: str, target: str) -> str:
    """What a reviewer is asked about one counterfactual."""
    return f"Does it show {attribute} = {target}? Did anything else that matters change?"


# --- import ----------------------------------------------------------------------------------


def read_import(path: str, sets: list[ReviewSet], run_id: str) -> pl.DataFrame:
    """The labels in ``path`` (CSV or a Label Studio JSON export), checked against the run's sets
    (module docstring); raises :class:`UserError` with one line at the first problem."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--import {path}: no such file (give a CSV of labels or a Label Studio JSON export)")
    if file.suffix.lower() == ".csv":
        rows = _csv_rows(file)
    elif file.suffix.lower() == ".json":
        rows = _label_studio_rows(file, run_id)
    else:
        raise UserError(f"--import {path}: give a .csv of labels or a Label Studio .json export")
    if not rows:
        raise UserError(f"--import {path}: no labels in the file")
    _check_rows(path, rows, sets)
    now = datetime.now(timezone.utc)
    for row in rows:
        row["answered_at"] = _timestamp(path, row.get("answered_at")) or now
        row["note"] = row.get("note") or None
        row.setdefault("sample_seed", None)
    frame = pl.DataFrame([{k: row.get(k) for k in LABELS_SCHEMA} for row in rows], schema=LABELS_SCHEMA)
    return as_labels(frame).unique(subset=["reviewer", "set_id", "member"], keep="last", maintain_order=True)


def _csv_rows(file: Path) -> list[dict[str, Any]]:
    try:
        frame = pl.read_csv(file, infer_schema=False)  # every column as text: checked below, not guessed
    except Exception as exc:  # polars raises several types for a malformed CSV
        raise UserError(f"--import {file}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    unknown = [c for c in frame.columns if c not in REQUIRED_CSV_COLUMNS + OPTIONAL_CSV_COLUMNS]
    if unknown:
        raise UserError(f"--import {file}: unknown column(s) {', '.join(map(repr, unknown))}; a labels CSV has "
                        f"{', '.join(REQUIRED_CSV_COLUMNS)} and optionally {', '.join(OPTIONAL_CSV_COLUMNS)}")
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"--import {file}: missing column(s) {', '.join(missing)}")
    rows = frame.to_dicts()
    for row in rows:
        seed = row.get("sample_seed")
        row["sample_seed"] = int(seed) if seed not in (None, "") and str(seed).lstrip("-").isdigit() else None
    return rows


def _label_studio_rows(file: Path, run_id: str) -> list[dict[str, Any]]:
    try:
        tasks = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"--import {file}: not a readable JSON file ({exc})") from None
    if not isinstance(tasks, list):
        raise UserError(f"--import {file}: a Label Studio JSON export is a list of tasks")
    rows = []
    for number, task in enumerate(tasks, start=1):
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or "cflab_set_id" not in data or "cflab_member" not in data:
            raise UserError(f"--import {file}: task {number} has no data.cflab_set_id / data.cflab_member "
                            "(export the tasks with cflab review RUN --export label-studio)")
        if data.get("cflab_run_id") not in (None, run_id):
            raise UserError(f"--import {file}: task {number} is from run {data['cflab_run_id']!r}, not {run_id!r}")
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue
            row = {"reviewer": _annotator(annotation.get("completed_by")), "set_id": data["cflab_set_id"],
                   "member": data["cflab_member"], "sample_seed": data.get("cflab_sample_seed"),
                   "answered_at": annotation.get("updated_at") or annotation.get("created_at")}
            for result in annotation.get("result") or []:
                name, value = result.get("from_name"), result.get("value") or {}
                if name in ("target_shown", "other_change"):
                    row[name] = (value.get("choices") or [None])[0]
                elif name == "note":
                    row["note"] = (value.get("text") or [None])[0]
                else:
                    raise UserError(f"--import {file}: task {number} has an answer to an unknown field {name!r} "
                                    "(expected target_shown, other_change, note)")
            rows.append(row)
    return rows


def _annotator(completed_by: Any) -> str:
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or f"labelstudio-{completed_by.get('id')}")
    return f"labelstudio-{completed_by}"


def _timestamp(path: str, value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--import {path}: answered_at {value!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _first(problems: list[str], what: str, path: str) -> None:
    if problems:
        more = f" ({len(problems)} rows in all)" if len(problems) > 1 else ""
        raise UserError(f"--import {path}: {problems[0]}{more}; {what}")


def _check_rows(path: str, rows: list[dict[str, Any]], sets: list[ReviewSet]) -> None:
    members = {s.set_id: {m.member for m in s.members} for s in sets}
    for row in rows:
        try:
            row["reviewer"] = check_reviewer(str(row.get("reviewer") or ""))
        except UserError:
            raise UserError(f"--import {path}: a row has no usable reviewer name ({row.get('reviewer')!r})") from None
    _first([f"unknown set {r['set_id']!r}" for r in rows if r.get("set_id") not in members],
           "the run has no such set (labels of another run?)", path)
    _first([f"unknown counterfactual {r['member']!r} of set {r['set_id']!r}" for r in rows
            if r.get("member") not in members[r["set_id"]]], "the set has no such counterfactual", path)
    _first([p for r in rows if (p := answer_problem(r.get("target_shown"), r.get("other_change"), r.get("note") or None))],
           "fix the value", path)


# --- Label Studio export ---------------------------------------------------------------------


def label_studio_config(roles: Iterable[str]) -> str:
    """The labeling config: the references every task has, the counterfactual, the two questions and a note."""
    images = "".join(f'  <Image name="{role}" value="${role}"/>\n' for role in roles)
    target = "".join(f'    <Choice value="{v}" hotkey="{TARGET_KEYS[v]}"/>\n' for v in TARGET_SHOWN)
    other = "".join(f'    <Choice value="{v}" hotkey="{OTHER_KEYS[v]}"/>\n' for v in OTHER_CHANGE)
    return ("<View>\n  <Header value=\"$question\"/>\n  <Image name=\"counterfactual\" value=\"$counterfactual\"/>\n"
            f"{images}"
            '  <Choices name="target_shown" toName="counterfactual" choice="single" required="true">\n'
            f"{target}  </Choices>\n"
            '  <Choices name="other_change" toName="counterfactual" choice="single" required="true">\n'
            f"{other}  </Choices>\n"
            '  <TextArea name="note" toName="counterfactual" maxSubmissions="1" editable="true"/>\n</View>\n')


def _data_uri(load_image: Callable[[str], Any], uri: str) -> str:
    image = load_image(uri)
    image.thumbnail((EXPORT_MAX_SIDE, EXPORT_MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=85)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def export_label_studio(run_uri: str, run_id: str, sample: Sample, load_image: Callable[[str], Any],
                        storage_options: dict[str, Any] | None = None) -> tuple[str, str, int]:
    """Write the sample as Label Studio tasks and its labeling config under ``review/``;
    returns (tasks URI, config URI, number of tasks)."""
    references = {s.set_id: {"reconstruction": s.reconstruction_uri, "original": s.original_uri,
                             "control": s.control_uri} for s in sample.sets}
    # The config is one for all tasks: it shows the references every set has.
    roles = [role for role in REFERENCE_ROLES if all(refs[role] for refs in references.values())]
    cache: dict[str, str] = {}

    def embedded(uri: str) -> str:
        if uri not in cache:
            cache[uri] = _data_uri(load_image, uri)
        return cache[uri]

    tasks = []
    for s in sample.sets:
        for m in s.members:
            data = {"question": question(s.attribute, m.target_value), "counterfactual": embedded(m.image_uri),
                    **{role: embedded(references[s.set_id][role]) for role in roles},
                    "cflab_run_id": run_id, "cflab_set_id": s.set_id, "cflab_member": m.member,
                    "cflab_sample_seed": sample.seed}
            tasks.append({"data": data})
    folder = review_uri(run_uri)
    tasks_uri, config_uri = join(folder, LABEL_STUDIO_TASKS), join(folder, LABEL_STUDIO_CONFIG)
    write_bytes_atomic(tasks_uri, json.dumps(tasks).encode("utf-8"), storage_options)
    write_bytes_atomic(config_uri, label_studio_config(roles).encode("utf-8"), storage_options)
    return tasks_uri, config_uri, len(tasks)
