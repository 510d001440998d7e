"""Benchmark: does the audit hold at 10³, 10⁴ and 10⁵ work items? Wall time, peak memory, Prefect's cost per task.

What runs: the whole ``dataset-audit`` flow (``flows.audit.dataset_audit``: ingest → validate
→ plan → generate → judge → evaluate → metrics → publish) on the planted-bias world
(``counterfactual_lab/validity``) with its ``planted-world`` editor, which loads no model and
costs a blur and a PNG per image: what is measured is the pipeline around generation, not
diffusion. Judge and model under audit are the world's fair CLIP model (a transformers
``CLIPModel`` of 16 channels reading 48 px images); few bootstrap resamples (``--bootstrap-samples``).

* **Sizes are work items**, not rows. How many items one row plans depends on the plan
  (today one per other gender value; with reconstructions and controls, the value list plus
  one control), so the bench plans a few world rows with ``plan_work_items`` and the size's
  config first, and writes ``ceil(items / items_per_row)`` rows.
* **The datasets** are the world of ``validity.world`` (rows drawn by ``world_row``, so the
  same rows as ``write_world``), written by :func:`write_scale_world` in chunks with a
  Parquet writer: ``write_world`` holds every row in one list, which at 10⁵ rows is the
  bench's own memory, not the audit's. Writing takes ~2 ms a row; with ``--work`` a dataset
  is written once and reused.
* **Each size runs in its own process** (``--child``), so its peak RSS (``VmHWM``) is its own;
  every process reports to one temporary Prefect server the parent starts
  (``prefect_test_harness``: a real API server, SQLite; ``--api-url`` uses a running one
  instead), with a fresh ``PREFECT_HOME`` (result storage, cache records) and a fresh output
  folder, so nothing is a cache hit. Imports (Prefect, Great Expectations, torch,
  transformers) happen before the timer; the server start is not timed.

Timings (``time.perf_counter``), all in the flow process:

* ``wall_s``: the ``dataset_audit(...)`` call;
* ``stages``: each stage's wall seconds (``validate``, ``plan``, ``generate``, ``candidates``,
  ``judge``, ``pool``, ``evaluate``, ``metrics``, ``publish``, ``artifacts``, ...), measured by
  wrapping the functions the flow's modules call (looked up by name; one that a code base lacks
  is skipped) and, for stages that are single Prefect tasks, the task-run engine
  (``prefect.task_engine.run_task_sync``); ``flow_other`` is the rest of the wall time
  (creating the flow and subflow runs, config, fingerprint, run id);
* ``peak_rss_mb``: the process's ``VmHWM`` (its highest resident set); ``rss_after_imports_mb``
  what it held before the flow started; per stage, the highest RSS sampled (every 50 ms)
  while the stage ran.

**Prefect's overhead per batch task** (the fan-outs: ``generate``, one task per
``--batch-size`` items, and ``evaluate``, one task per 256 pool images). For each task run the
engine interval (``run_task_sync`` on its worker thread) and the task's own work inside it
(the library calls the task body makes: ``generate_batch``; ``ClipEmbedder.load``, ``predict``,
``retrieval_scores``) are recorded, and every HTTP request Prefect's clients make. Three
figures per size:

* ``overhead_ms_per_task`` (the headline, from ``generate``): (stage wall time − the time during
  which at least one task was doing its own work) / tasks: what the fan-out adds to the run's
  wall time per batch (run creation, parameter resolution, cache-key computation and lookup,
  result persistence, state changes, logs, tag concurrency slots, the flow's submission loop,
  progress artifacts, the check for stale cached batches). Prefect's time on one thread is
  hidden while the other thread works, so this is a lower bound on Prefect's CPU time;
* ``engine_ms_per_task``: Σ(engine interval − own work) / tasks, Prefect's time inside each
  task run on its thread (not hidden by the other thread, but it includes waiting for the GIL
  and for Prefect's own background threads while the other thread works);
* ``noop_ms_per_task``: a no-op task mapped as many times as there were generation batches on
  the same task runner, right after the audit in the same process, without tags (``plain``),
  with the generation task's tags (``tagged``), and with everything a generation task has but
  its work (``generation_path``: quoted batches of work items, the cache policy with its JSON
  result stored and verified, the batch's writer lock): wall time / tasks, Prefect alone.

**Orchestration share** (``orchestration_share``, per size and at the top level): the part of
the audit's wall time during which no library code ran, ``1 − |∪ library spans| / wall_s``. The
library spans are every task's own work above (``generate_batch``, ``ingest_and_validate``,
``judge_candidates``, ``predict``, ``retrieval_scores``, ``compute_metrics``, ``ClipEmbedder.load``;
with ``--auditee vlm`` the generative auditee's ``answer`` and ``generative_run_metrics``) and the library stages the flow thread
runs itself (``locate``, ``write_validation``, ``plan``, ``candidates``, ``pool``, ``accounting``,
``publish``); what is left is Prefect (flow and task runs, states, results, artifacts) and the
fan-outs' own loops. Generation and evaluation tasks are sized by ``runtime.tasks_per_worker``
(``flows/task_sizes.py``), so their number, and Prefect's cost, no longer grows with the audit.

**A generative model under audit** (``--auditee vlm``): the tiny random VLM
(``demo/tiny_auditees.py``) answers a choice over the world's labels and a yes/no question per
image, every answer through the output store's sharded answer cache; each size then also reports
``answers`` (computed + served from the cache) and ``objects_written`` (answer shards and index
segments; target: at most one per 100 answers).

Targets: overhead ≤ 20 ms per batch task, ``orchestration_share`` ≤ 0.05 at 10⁵ items, peak
memory growing sub-linearly (≤ 2× from 10⁴ to 10⁵), nothing quadratic (``wall_s`` per item
roughly flat across sizes).

    python bench/scale.py                                  # 10³, 10⁴, 10⁵ (the 10⁵ run takes long on 2 cores)
    python bench/scale.py --sizes 1000,10000 --work /tmp/scale   # keep datasets and runs for a rerun
    python bench/scale.py --sizes 10000 --profile          # + the busiest functions of every thread
    python bench/scale.py --sizes 300 --api-url http://127.0.0.1:4200/api   # a running server; the smoke test's size
    python bench/scale.py --sizes 1000,10000,100000 --auditee vlm          # + answers and objects_written

Last line JSON: ``{"bench": "scale", "overhead_ms_per_task": <at the largest size>, "sizes":
{"1000": {"wall_s", "peak_rss_mb", "rss_after_imports_mb", "items", "planned", "generated",
"rows", "ms_per_item", "tasks", "overhead_ms_per_task", "engine_ms_per_task",
"orchestration_share", "gc" (seconds of garbage collection: all, per generation, in the
generate stage), "noop_ms_per_task", "stages_s", "load_average", ["answers", "objects_written"]},
...}, "orchestration_share": <at 10⁵ when run, else the largest size>,
["answers", "objects_written": <the same size's>,] "auditee", "batch_size", ...}``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

DEFAULT_SIZES = "1000,10000,100000"
WORLD_SEED = 7  # no other bench uses this world
WRITE_CHUNK_ROWS = 2048
RSS_SAMPLE_SECONDS = 0.05
GENERATE_TASK = "generate-counterfactual-batch"
EVALUATE_TASKS = {"clip": "evaluate-batch", "vlm": "evaluate-auditee-batch"}
ORCHESTRATION_TARGET_SIZE = 100_000  # the size whose share is the top-level figure when it was run
NOOP_MIN_TASKS, NOOP_MAX_TASKS = 50, 2000  # no-op fan-out: as many tasks as the generate stage, within these
NOOP_ATTEMPTS, NOOP_RETRY_SECONDS = 3, 20.0

# Stages the flow runs in its own thread: (name in the results, module, attribute). Each is
# wrapped where its caller looks it up; a name a code base does not have is skipped.
FLOW_STAGES: list[tuple[str, str, str]] = [
    ("locate", "counterfactual_lab.flows.audit", "locate_run"),
    ("write_validation", "counterfactual_lab.flows.stage_run", "write_validation_outputs"),
    ("plan", "counterfactual_lab.flows.designs", "plan_work_items"),
    ("generate", "counterfactual_lab.flows.fan_out", "generate_batches"),
    ("candidates", "counterfactual_lab.generation.rounds", "candidates_frame"),  # once per round (rounds.run_rounds)
    ("pool", "counterfactual_lab.flows.designs", "build_evaluation_pool"),
    ("evaluate", "counterfactual_lab.flows.evaluation", "ContrastiveEvaluation.evaluate"),
    ("evaluate", "counterfactual_lab.flows.evaluation", "GenerativeEvaluation.evaluate"),
    ("accounting", "counterfactual_lab.flows.audit", "row_accounting"),
    ("publish", "counterfactual_lab.flows.audit", "publish_run"),
    ("artifacts", "counterfactual_lab.flows.audit", "_publish_artifacts"),
]
# Flow-thread stages that are library code (the rest of the flow thread's time is Prefect's or a fan-out's loop).
LIBRARY_STAGES = {"locate", "write_validation", "plan", "candidates", "pool", "accounting", "publish"}
# Stages that are one Prefect task called from the flow: task name -> stage name.
TASK_STAGES = {"validate-dataset": "validate", "judge-counterfactuals": "judge", "compute-metrics": "metrics",
               "compute-auditee-metrics": "metrics"}
# Library calls that are a task's own work, wrapped where the task bodies look them up.
TASK_WORK: list[tuple[str, str]] = [
    ("counterfactual_lab.tasks.generate", "generate_batch"),
    ("counterfactual_lab.tasks.validate", "ingest_and_validate"),
    ("counterfactual_lab.tasks.judge", "judge_with_drift"),
    # the contrastive auditee imports these from counterfactual_lab.evaluate.pool at call time
    ("counterfactual_lab.evaluate.pool", "predict"),
    ("counterfactual_lab.evaluate.pool", "retrieval_scores"),
    ("counterfactual_lab.tasks.evaluate", "compute_metrics"),
    ("counterfactual_lab.tasks.evaluate", "generative_run_metrics"),
    ("counterfactual_lab.models.clip", "ClipEmbedder.load"),
    ("counterfactual_lab.evaluate.auditees.vlm", "GenerativeAuditee.answer"),
]
# A generative model under audit (--auditee vlm): the world's labels as a choice, and one question.
VLM_CHOICE_PROMPT = "What is this person's job? Answer with one of: {options}."
VLM_QUESTION = "Is this person a doctor? Answer yes or no."
PREIMPORTS = ["counterfactual_lab.flows.audit", "great_expectations", "torch", ("transformers", "CLIPModel"), ("transformers", "AutoProcessor")]


# -- the dataset --------------------------------------------------------------------------------
def write_scale_world(out_dir: Path, rows: int, seed: int = WORLD_SEED) -> Path:
    """``rows`` rows of world ``seed`` as one Parquet file (the layout of ``write_world``), in chunks.

    Reused when a complete copy is already there (a ``.complete`` marker naming rows and seed).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from counterfactual_lab.validity.world import png_bytes, world_row

    marker = out_dir / ".complete"
    if marker.exists() and marker.read_text() == f"{rows} {seed}":
        return out_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    schema = pa.schema(
        [("id", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
         ("caption", pa.string()), ("gender", pa.string()), ("label", pa.string())]
    )
    with pq.ParquetWriter(out_dir / "part-00000.parquet", schema) as writer:
        for start in range(0, rows, WRITE_CHUNK_ROWS):
            records = []
            for index in range(start, min(rows, start + WRITE_CHUNK_ROWS)):
                row = world_row(seed, index)
                records.append({"id": row.id, "image": {"bytes": png_bytes(row.pixels), "path": f"{row.id}.png"},
                                "caption": row.caption, "gender": row.gender, "label": row.label})
            writer.write_table(pa.Table.from_pylist(records, schema=schema), row_group_size=1024)
    (out_dir / "README.md").write_text(f"cflab planted-bias world {seed}, {rows} rows, written by bench/scale.py\n")
    marker.write_text(f"{rows} {seed}")
    return out_dir


def audit_config(dataset: Path, model: Path, out: Path, name: str, args: argparse.Namespace,
                 vlm: Path | None = None) -> dict[str, Any]:
    """The world's audit config (``validity.audit_config``) with this bench's batch size and workers;
    with ``vlm``, that generative model under audit (a choice over the labels, one yes/no question)."""
    from counterfactual_lab.validity.audit_config import world_audit_config

    config = world_audit_config(
        dataset, model, model, str(out), name=name, bootstrap_samples=args.bootstrap_samples,
        max_workers=args.max_workers, batch_size=args.batch_size,
    )
    if vlm is not None:
        config["audit"] = {
            "kind": "vlm", "model": str(vlm), "labels": config["audit"]["labels"], "choice_prompt": VLM_CHOICE_PROMPT,
            "yes_no": [VLM_QUESTION], "bootstrap_samples": args.bootstrap_samples, "batch_size": 32,
        }
    # The planted-world editor ignores generation.model, but the run identity resolves every
    # model named (a local folder is hashed; anything else is looked up on the hub, which is
    # not reachable here): name a local folder.
    config["generation"]["model"] = str(model)
    return config


def items_per_row(config: dict[str, Any], sample_rows: int = 8) -> float:
    """Work items the plan makes per world row under ``config`` (planned on ``sample_rows`` rows).

    The world alternates female and male rows, so an even sample is exact for any plan that
    treats the two values alike.
    """
    import polars as pl

    from counterfactual_lab.config.audit_config import AuditConfig
    from counterfactual_lab.plan.work_items import plan_work_items
    from counterfactual_lab.validity.world import world_row

    parsed = AuditConfig.parse_config(dict(config), source="scale bench config")
    spec = parsed.dataset_spec()
    sample = [world_row(WORLD_SEED, i) for i in range(sample_rows)]
    frame = pl.DataFrame(
        {
            "id": [r.id for r in sample],
            "content_key": [f"{i:064x}" for i in range(sample_rows)],
            "image_uri": [f"/nonexistent/{i}.png" for i in range(sample_rows)],
            "caption": [r.caption for r in sample],
            "gender": [r.gender for r in sample],
            "label": [r.label for r in sample],
        }
    )
    return len(plan_work_items(frame, parsed, spec)) / sample_rows


# -- measuring inside the flow process ----------------------------------------------------------
class Recorder:
    """Thread-safe record of (kind, name, thread, start, end) intervals."""

    def __init__(self) -> None:
        self.intervals: list[tuple[str, str, int, float, float]] = []
        self._lock = threading.Lock()

    def wrap(self, kind: str, name: str, function):
        recorder = self

        @functools.wraps(function)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                end = time.perf_counter()
                with recorder._lock:
                    recorder.intervals.append((kind, name, threading.get_ident(), start, end))

        return timed

    def of(self, kind: str, name: str | None = None) -> list[tuple[str, str, int, float, float]]:
        return [i for i in self.intervals if i[0] == kind and (name is None or i[1] == name)]


def _patch(module_name: str, attribute: str, wrap) -> bool:
    """Replace ``module.attribute`` (or ``module.Class.method``) by ``wrap(original)``; False if absent."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    if "." in attribute:
        class_name, method_name = attribute.split(".")
        cls = getattr(module, class_name, None)
        raw = cls.__dict__.get(method_name) if cls is not None else None
        if raw is None:
            return False
        if isinstance(raw, classmethod):
            setattr(cls, method_name, classmethod(wrap(raw.__func__)))
        else:
            setattr(cls, method_name, wrap(raw))
        return True
    original = getattr(module, attribute, None)
    if original is None:
        return False
    setattr(module, attribute, wrap(original))
    return True


def install_recorders(recorder: Recorder) -> list[str]:
    """Wrap stage functions, tasks' own work and Prefect's task-run engine; returns what is missing."""
    import prefect.task_engine as task_engine

    missing = []
    for stage, module_name, attribute in FLOW_STAGES:
        if not _patch(module_name, attribute, lambda f, s=stage: recorder.wrap("stage", s, f)):
            missing.append(f"{module_name}.{attribute}")
    for module_name, attribute in TASK_WORK:
        if not _patch(module_name, attribute, lambda f, a=attribute: recorder.wrap("work", a, f)):
            missing.append(f"{module_name}.{attribute}")

    # Every task run, whether submitted to the thread pool or called in the flow, goes
    # through run_task_sync (task_runners and run_task look it up in the module at call time).
    original = task_engine.run_task_sync

    @functools.wraps(original)
    def timed_engine(*args, **kwargs):
        task = kwargs.get("task", args[0] if args else None)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            end = time.perf_counter()
            with recorder._lock:
                recorder.intervals.append(("task", getattr(task, "name", "?"), threading.get_ident(), start, end))

    task_engine.run_task_sync = timed_engine
    _record_api_requests(recorder)
    _record_garbage_collections(recorder)
    return missing


def _record_garbage_collections(recorder: Recorder) -> None:
    """Record each of Python's garbage collections (it holds the GIL: every thread stops)."""
    started: dict[int, float] = {}

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[info["generation"]] = time.perf_counter()
        elif info["generation"] in started:
            s = started.pop(info["generation"])
            # Without the recorder's lock: a collection can start while this thread holds it.
            recorder.intervals.append(("gc", f"gen{info['generation']}", threading.get_ident(), s, time.perf_counter()))

    gc.callbacks.append(callback)


_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _record_api_requests(recorder: Recorder) -> None:
    """Record every HTTP request of Prefect's clients as ("api", "METHOD /path/{id}", ...)."""
    import httpx

    for cls in (httpx.Client, httpx.AsyncClient):
        original = cls.send
        if inspect.iscoroutinefunction(original):
            async def send(self, request, *args, __original=original, **kwargs):
                start = time.perf_counter()
                try:
                    return await __original(self, request, *args, **kwargs)
                finally:
                    _add_request(recorder, request, start)
        else:
            def send(self, request, *args, __original=original, **kwargs):
                start = time.perf_counter()
                try:
                    return __original(self, request, *args, **kwargs)
                finally:
                    _add_request(recorder, request, start)
        cls.send = send


def _add_request(recorder: Recorder, request: Any, start: float) -> None:
    name = f"{request.method} {_ID.sub('{id}', request.url.path)}"
    with recorder._lock:
        recorder.intervals.append(("api", name, threading.get_ident(), start, time.perf_counter()))


class RssSampler:
    """Samples this process's resident set every ``interval`` seconds (``/proc/self/statm``)."""

    def __init__(self, interval: float = RSS_SAMPLE_SECONDS) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def rss_mb(self) -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self._page_mb

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.perf_counter(), self.rss_mb()))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak_between(self, start: float, end: float) -> float | None:
        inside = [mb for t, mb in self.samples if start <= t <= end]
        return round(max(inside), 1) if inside else None


def peak_rss_mb() -> float:
    """Peak RSS of this process since exec (``VmHWM``; fresh at exec, unlike ``ru_maxrss``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (this bench needs Linux)")


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of ``spans`` ((start, end) pairs)."""
    total, current_start, current_end = 0.0, None, None
    for s, e in sorted(spans):
        if current_end is None or s > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = s, e
        else:
            current_end = max(current_end, e)
    if current_end is not None:
        total += current_end - current_start
    return total


def orchestration_share(recorder: Recorder, start: float, end: float) -> float:
    """``1 − |∪ library spans| / wall`` over ``[start, end]`` (see the module docstring)."""
    spans = [(s, e) for _, _, _, s, e in recorder.of("work")]
    spans += [(s, e) for _, name, _, s, e in recorder.of("stage") if name in LIBRARY_STAGES]
    clipped = [(max(s, start), min(e, end)) for s, e in spans if e > start and s < end]
    return round(1.0 - union_seconds(clipped) / (end - start), 4)


def garbage_collection_figures(recorder: Recorder, start: float, end: float,
                               generate_span: tuple[float, float] | None) -> dict[str, Any]:
    """Seconds Python's garbage collector held the GIL during the audit (per generation) and in the generate stage."""
    collections = [(name, s, e) for _, name, _, s, e in recorder.of("gc") if s >= start and e <= end]
    figures: dict[str, Any] = {"s": round(sum(e - s for _, s, e in collections), 3), "collections": len(collections)}
    for name in sorted({name for name, _, _ in collections}):
        figures[f"{name}_s"] = round(sum(e - s for n, s, e in collections if n == name), 3)
        figures[f"{name}_collections"] = sum(1 for n, _, _ in collections if n == name)
    if generate_span:
        figures["generate_stage_s"] = round(
            sum(e - s for _, s, e in collections if s >= generate_span[0] and e <= generate_span[1]), 3)
    return figures


def fan_out_figures(recorder: Recorder, task_name: str, stage_span: tuple[float, float] | None) -> dict[str, Any] | None:
    """Tasks, own work and Prefect's share of one fan-out stage (see the module docstring)."""
    runs = recorder.of("task", task_name)
    if not runs or stage_span is None:
        return None
    work = recorder.of("work")
    engine_s = own_s = 0.0
    own_spans = []
    for _, _, thread, start, end in runs:
        engine_s += end - start
        inside = [(s, e) for _, _, t, s, e in work if t == thread and s >= start and e <= end]
        own_s += sum(e - s for s, e in inside)
        own_spans.extend(inside)
    wall = stage_span[1] - stage_span[0]
    busy = union_seconds(own_spans)
    requests = [i for i in recorder.of("api") if stage_span[0] <= i[3] <= stage_span[1]]
    by_path: dict[str, list[float]] = {}
    for _, name, _, s, e in requests:
        by_path.setdefault(name, []).append(e - s)
    return {
        "tasks": len(runs),
        "stage_s": round(wall, 3),
        "own_work_s": round(own_s, 3),
        "own_work_union_s": round(busy, 3),
        "engine_s": round(engine_s, 3),
        "overhead_ms_per_task": round(1000 * (wall - busy) / len(runs), 2),
        "engine_ms_per_task": round(1000 * (engine_s - own_s) / len(runs), 2),
        "api_requests_per_task": round(len(requests) / len(runs), 2),
        "api_requests": {
            name: {"count": len(d), "mean_ms": round(1000 * sum(d) / len(d), 1)}
            for name, d in sorted(by_path.items(), key=lambda kv: -len(kv[1]))
        },
    }


def noop_fan_out(tasks: int, config_uri: str) -> dict[str, float]:
    """Prefect alone: ms per task of ``tasks`` no-op task runs mapped on the audit's task runner.

    ``plain``: a task with no tags, no cache, no stored result; ``tagged``: the same with the
    generation task's tags (a tag makes every run acquire a concurrency slot of that name; a CPU
    thread run drops the ``gpu`` tag, so the audit itself no longer pays this); ``generation_path``:
    a task with everything a generation task has around its work (batches of ``--batch-size``
    work items, quoted; the work-item cache policy with its JSON result stored and verified; the
    batch's writer lock in a fresh output folder) and a body that makes no image.
    """
    import tempfile
    import uuid

    from prefect import flow, task, unmapped
    from prefect.cache_policies import NO_CACHE

    from counterfactual_lab.config.audit_config import AuditConfig
    from counterfactual_lab.generation.records import GenerationRecord
    from counterfactual_lab.plan.work_items import WorkItem
    from counterfactual_lab.storage.files import ImageStore
    from counterfactual_lab.tasks.cache import WorkItemsCachePolicy
    from counterfactual_lab.tasks.generate import generate_counterfactual_batch, generation_task_for
    from counterfactual_lab.tasks.result_serialization import GenerationRecordsSerializer
    from counterfactual_lab.tasks.runners import make_task_runner, picklable_quote

    @task(name="scale-bench-noop", cache_policy=NO_CACHE, persist_result=False)
    def noop(index: int) -> int:
        return index

    @task(name="scale-bench-noop-batch", cache_policy=WorkItemsCachePolicy(), persist_result=True,
          result_serializer=GenerationRecordsSerializer())
    def noop_batch(items: list, generation: Any, store: ImageStore, device: str = "cpu") -> list:
        return [GenerationRecord(item.content_key, f"{store.root_uri}/{item.content_key}.png", "generated") for item in items]

    @flow(name="scale-bench-noop-fan-out", persist_result=False)
    def fan_out(count: int, tags: list[str]) -> float:
        started = time.perf_counter()
        for future in noop.with_options(tags=tags).map(list(range(count))):
            future.result()
        return time.perf_counter() - started

    @flow(name="scale-bench-noop-generation-path", persist_result=False)
    def fan_out_batches(count: int, batch_size: int, root: str) -> float:
        store = ImageStore(root)
        run = uuid.uuid4().hex  # new content keys: every batch is a cache miss, as in a cold audit
        batches = [
            picklable_quote([
                WorkItem(f"s{b}-{i}", "0" * 64, "/none.png", "c", "gender", "female", "male", 0, "c", "", "", "noop",
                         content_key=f"{run}-{b}-{i}")
                for i in range(batch_size)
            ])
            for b in range(count)
        ]
        started = time.perf_counter()
        for future in generation_task_for(store, noop_batch).map(batches, unmapped(None), unmapped(store), unmapped("cpu")):
            future.result()
        return time.perf_counter() - started

    config = AuditConfig.from_yaml(config_uri)
    runtime = config.runtime
    result = {}
    for label, tags in (("plain", []), ("tagged", sorted(generate_counterfactual_batch.tags or []))):
        seconds = fan_out.with_options(task_runner=make_task_runner(runtime))(tasks, tags)
        result[label] = round(1000 * seconds / tasks, 2)
    with tempfile.TemporaryDirectory(prefix="scale-bench-noop-") as root:
        seconds = fan_out_batches.with_options(task_runner=make_task_runner(runtime))(
            tasks, config.generation.batch_size, root)
    result["generation_path"] = round(1000 * seconds / tasks, 2)
    return result


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Run one audit in this process and measure it (the parent starts one of these per size)."""
    recorder = Recorder()
    started = time.perf_counter()
    for entry in PREIMPORTS:
        if isinstance(entry, tuple):
            getattr(importlib.import_module(entry[0]), entry[1])
        else:
            importlib.import_module(entry)
    import torch

    torch.set_num_threads(1)  # tiny model; the two task threads and the server share the cores
    missing = install_recorders(recorder)
    import_s = time.perf_counter() - started

    from counterfactual_lab.flows.audit import dataset_audit

    sampler_profile = None
    if args.profile:
        from bench.audit import ThreadSampler

        sampler_profile = ThreadSampler(interval=0.01)
    rss = RssSampler()
    rss_before = rss.rss_mb()
    load_before = os.getloadavg()
    with rss:
        start = time.perf_counter()
        if sampler_profile:
            with sampler_profile:
                run_uri = dataset_audit(config_uri=args.config)
        else:
            run_uri = dataset_audit(config_uri=args.config)
        end = time.perf_counter()
    manifest = json.loads((Path(run_uri) / "manifest.json").read_text())
    from counterfactual_lab.models.clip import embedding_cache

    cache = embedding_cache()  # judge and evaluate share it when they use one model
    if args.intervals:
        # Every recorded interval, relative to the flow call's start: for reading a timeline.
        rows = [(kind, name, thread, round(s - start, 4), round(e - start, 4)) for kind, name, thread, s, e in recorder.intervals]
        Path(args.intervals).write_text(json.dumps(sorted(rows, key=lambda r: r[3])))

    stages: dict[str, dict[str, Any]] = {}

    def add(stage: str, s: float, e: float) -> None:
        entry = stages.setdefault(stage, {"s": 0.0, "calls": 0, "span": [s, e]})
        entry["s"] += e - s
        entry["calls"] += 1
        entry["span"] = [min(entry["span"][0], s), max(entry["span"][1], e)]

    for _, stage, _, s, e in recorder.of("stage"):
        add(stage, s, e)
    for _, task_name, _, s, e in recorder.of("task"):
        if task_name in TASK_STAGES:
            add(TASK_STAGES[task_name], s, e)
    # The stages never overlap (the flow runs them one after another): the rest is the flow's own.
    accounted = sum(v["s"] for v in stages.values())
    result_stages = {}
    for stage, entry in sorted(stages.items(), key=lambda kv: kv[1]["span"][0]):
        result_stages[stage] = {
            "s": round(entry["s"], 3),
            "peak_rss_mb": rss.peak_between(*entry["span"]),
        }
    result_stages["flow_other"] = {"s": round((end - start) - accounted, 3), "peak_rss_mb": None}

    generate_span = tuple(stages["generate"]["span"]) if "generate" in stages else None
    evaluate_span = tuple(stages["evaluate"]["span"]) if "evaluate" in stages else None
    generate = fan_out_figures(recorder, GENERATE_TASK, generate_span)
    evaluate = fan_out_figures(recorder, EVALUATE_TASKS[args.auditee], evaluate_span)
    counts = manifest.get("generation_counts") or {}
    accounting = manifest.get("row_accounting") or {}
    result: dict[str, Any] = {
        "wall_s": round(end - start, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_imports_mb": round(rss_before, 1),
        "import_s": round(import_s, 1),
        "planned": accounting.get("planned"),
        "rows_in": accounting.get("rows_in"),
        "kept": accounting.get("kept"),
        "generated": counts.get("generated"),
        "failed": counts.get("failed"),
        "generate": generate,
        "evaluate": evaluate,
        "orchestration_share": orchestration_share(recorder, start, end),
        "gc": garbage_collection_figures(recorder, start, end, generate_span),
        "stages": result_stages,
        "not_measured": missing,
        "embedding_cache": {"hits": cache.hits, "misses": cache.misses, "entries": len(cache), "max_entries": cache.max_entries},
        "load_average": {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in os.getloadavg()]},
        "run_uri": run_uri,
    }
    auditee = (manifest.get("counts") or {}).get("auditee")
    if auditee is not None:  # a generative model under audit: its answers and the cache objects they took
        result["answers"] = auditee.get("computed", 0) + auditee.get("cached", 0)
        result["objects_written"] = auditee.get("objects_written")
    if not args.skip_noop and generate:
        tasks = min(max(generate["tasks"], NOOP_MIN_TASKS), NOOP_MAX_TASKS)
        for attempt in range(1, NOOP_ATTEMPTS + 1):
            try:
                result["noop_ms_per_task"] = noop_fan_out(tasks, args.config)
                result.pop("noop_error", None)
                break
            except Exception as exc:  # noqa: BLE001 - the audit's figures stand without it
                # Seen after every 10⁵ run: the temporary SQLite server answers 503 while it
                # writes the backlog of the audit's task-run events. Wait and try again.
                result["noop_error"] = f"attempt {attempt}: {type(exc).__name__}: {exc}"[:300]
                time.sleep(NOOP_RETRY_SECONDS * attempt)
    if sampler_profile:
        result["profile"] = sampler_profile.report(top=60)
    return result


# -- the parent ---------------------------------------------------------------------------------
def parse_sizes(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--sizes: {part!r} is not a number") from None
        if value < 1 or value != int(value):
            raise argparse.ArgumentTypeError(f"--sizes: {part!r} must be a whole number of work items >= 1")
        sizes.append(int(value))
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES),
                        help=f"work items per audit, comma-separated (default {DEFAULT_SIZES}; 1e4 works)")
    parser.add_argument("--batch-size", type=int, default=64, help="work items per generation task (default 64)")
    parser.add_argument("--max-workers", type=int, default=2, help="task threads (runtime.max_workers; default 2)")
    parser.add_argument("--bootstrap-samples", type=int, default=50, help="bootstrap resamples per interval (default 50)")
    parser.add_argument("--work", help="keep datasets, models and runs here and reuse datasets (default: a temporary folder, removed)")
    parser.add_argument("--api-url", help="report to this running Prefect server instead of starting a temporary one")
    parser.add_argument("--profile", action="store_true", help="sample every thread's stack; print the busiest functions per size")
    parser.add_argument("--skip-noop", action="store_true", help="skip the no-op task fan-out measured after each audit")
    parser.add_argument("--auditee", choices=sorted(EVALUATE_TASKS), default="clip",
                        help="model under audit: the world's CLIP (default) or a tiny generative VLM, whose answers "
                        "go through the sharded answer cache (reports answers and objects_written)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--intervals", help=argparse.SUPPRESS)  # child: write every timed interval here (JSON)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_workers < 1:
        parser.error(f"--max-workers must be at least 1, got {args.max_workers}")
    if args.bootstrap_samples < 50:
        parser.error(f"--bootstrap-samples must be at least 50 (the config's minimum), got {args.bootstrap_samples}")
    return args


def run_size(size: int, args: argparse.Namespace, work: Path, model: Path, api_url: str) -> dict[str, Any]:
    """Write the dataset for ``size`` items (not timed), then audit it in a new process."""
    from counterfactual_lab.validity.audit_config import write_world_audit_config

    size_dir = work / f"size-{size}"
    out, prefect_home = size_dir / "out", size_dir / "prefect-home"
    for path in (out, prefect_home):
        if path.exists():
            shutil.rmtree(path)
    vlm = None
    if args.auditee == "vlm":
        from counterfactual_lab.demo.tiny_auditees import build_tiny_auditee_models

        vlm = build_tiny_auditee_models(work / "auditee-models", names=("vlm",))["vlm"]
    probe = audit_config(work / "probe", model, out, f"scale-{size}", args, vlm)
    per_row = items_per_row(probe)
    rows = max(1, math.ceil(size / per_row))
    t0 = time.perf_counter()
    dataset = write_scale_world(work / "worlds" / f"rows-{rows}", rows)
    write_s = time.perf_counter() - t0
    config_path = write_world_audit_config(size_dir / "audit.yaml", audit_config(dataset, model, out, f"scale-{size}", args, vlm))
    print(f"\n{size} work items: {rows} rows × {per_row:g} items per row (dataset {write_s:.1f} s, not timed)", flush=True)

    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(prefect_home),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PREFECT_PROFILES_PATH", None)
    command = [sys.executable, __file__, "--child", "--config", str(config_path)]
    command += ["--intervals", str(size_dir / "intervals.json")]  # a timeline for reading later (--work keeps it)
    command += ["--profile"] if args.profile else []
    command += ["--skip-noop"] if args.skip_noop else []
    command += ["--auditee", args.auditee]
    log_path = size_dir / "child.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(command, env=env, cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=log, text=True)
    if proc.returncode != 0:
        sys.stderr.write(log_path.read_text()[-8000:])
        raise SystemExit(f"bench/scale.py: the audit of {size} work items failed (exit {proc.returncode}); log: {log_path}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(items=size, rows=rows, items_per_row=per_row, process_s=round(time.perf_counter() - started, 1))
    return result


def print_size(size: int, r: dict[str, Any]) -> None:
    gc_figures = r.get("gc") or {}
    if gc_figures:
        print(f"  garbage collection {gc_figures['s']:.1f} s in {gc_figures['collections']} collections "
              f"(full: {gc_figures.get('gen2_s', 0.0):.1f} s in {gc_figures.get('gen2_collections', 0)}; "
              f"in the generate stage {gc_figures.get('generate_stage_s', 0.0):.1f} s)")
    print(f"  orchestration share {r['orchestration_share']:.3f} (wall time with no library code running)"
          + (f"; {r['answers']} answers, {r['objects_written']} answer-cache objects written" if "answers" in r else ""))
    print(f"  audit {r['wall_s']:.1f} s ({1000 * r['wall_s'] / size:.2f} ms per item), peak RSS {r['peak_rss_mb']:.0f} MB "
          f"({r['rss_after_imports_mb']:.0f} MB after imports); planned {r['planned']}, generated {r['generated']}, "
          f"failed {r['failed']}, kept {r['kept']}; load {r['load_average']['start']} -> {r['load_average']['end']}")
    for name in ("generate", "evaluate"):
        f = r.get(name)
        if f:
            print(f"  {name}: {f['tasks']} tasks, stage {f['stage_s']:.1f} s, own work {f['own_work_s']:.1f} s "
                  f"(union {f['own_work_union_s']:.1f} s): overhead {f['overhead_ms_per_task']:.1f} ms/task, "
                  f"engine {f['engine_ms_per_task']:.1f} ms/task; {f['api_requests_per_task']:.1f} API requests/task")
            print("    API requests in the stage: " + ", ".join(
                f"{k} ×{v['count']} ({v['mean_ms']:.0f} ms)" for k, v in f["api_requests"].items()))
    if r.get("noop_error"):
        print(f"  no-op fan-out failed: {r['noop_error']}")
    if r.get("noop_ms_per_task"):
        noop = r["noop_ms_per_task"]
        print(f"  no-op fan-out beside it: {noop['plain']:.1f} ms/task plain, {noop['tagged']:.1f} ms/task with the generation task's tags"
              + (f", {noop['generation_path']:.1f} ms/task through the generation task's cache, result and lock"
                 if "generation_path" in noop else ""))
    print("  stages (s, peak RSS MB):  " + ", ".join(
        f"{k} {v['s']:.2f}" + (f" ({v['peak_rss_mb']:.0f})" if v["peak_rss_mb"] else "") for k, v in r["stages"].items()))
    cache = r.get("embedding_cache") or {}
    if cache:
        print(f"  embedding cache: {cache['hits']} hits, {cache['misses']} misses, {cache['entries']} of {cache['max_entries']} entries")
    if r.get("not_measured"):
        print(f"  not measured (absent in this code base): {r['not_measured']}")
    if "profile" in r:
        print("  sampled, cumulative seconds (all busy threads):")
        for label, seconds in r["profile"]["cumulative_top"]:
            print(f"    {seconds:>8.2f}  {label}")
        print("  sampled, innermost frame:")
        for label, seconds in r["profile"]["leaf_top"][:30]:
            print(f"    {seconds:>8.2f}  {label}")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.child:
        try:
            result = child(args)
        except Exception:
            traceback.print_exc()
            raise SystemExit(1)
        print(json.dumps(result))
        return None

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cflab-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = os.getloadavg()
    try:
        from counterfactual_lab.validity.models import build_world_models

        model = build_world_models(work / "models")["fair"]
        results: dict[str, dict[str, Any]] = {}
        if args.api_url:
            api_url = args.api_url
            for size in args.sizes:
                results[str(size)] = run_size(size, args, work, model, api_url)
                print_size(size, results[str(size)])
        else:
            import counterfactual_lab.flows  # noqa: F401  (the project's offline Prefect defaults, before Prefect loads)
            from prefect.settings import PREFECT_API_URL
            from prefect.testing.utilities import prefect_test_harness

            t0 = time.perf_counter()
            with prefect_test_harness(server_startup_timeout=180):
                api_url = PREFECT_API_URL.value()
                print(f"temporary Prefect server at {api_url} ({time.perf_counter() - t0:.1f} s to start)", flush=True)
                for size in args.sizes:
                    results[str(size)] = run_size(size, args, work, model, api_url)
                    print_size(size, results[str(size)])
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    largest = str(max(args.sizes))
    sizes = {}
    for key, r in results.items():
        sizes[key] = {
            "wall_s": r["wall_s"],
            "peak_rss_mb": r["peak_rss_mb"],
            "rss_after_imports_mb": r["rss_after_imports_mb"],
            "items": r["items"],
            "planned": r["planned"],
            "generated": r["generated"],
            "rows": r["rows"],
            "ms_per_item": round(1000 * r["wall_s"] / r["items"], 3),
            "tasks": {k: r[k]["tasks"] for k in ("generate", "evaluate") if r.get(k)},
            "overhead_ms_per_task": (r.get("generate") or {}).get("overhead_ms_per_task"),
            "engine_ms_per_task": (r.get("generate") or {}).get("engine_ms_per_task"),
            "evaluate_overhead_ms_per_task": (r.get("evaluate") or {}).get("overhead_ms_per_task"),
            "orchestration_share": r["orchestration_share"],
            "gc": r.get("gc"),
            **({"answers": r["answers"], "objects_written": r["objects_written"]} if "answers" in r else {}),
            "noop_ms_per_task": r.get("noop_ms_per_task"),
            **({"noop_error": r["noop_error"]} if r.get("noop_error") else {}),
            "stages_s": {k: v["s"] for k, v in r["stages"].items()},
            "load_average": r["load_average"],
            "not_measured": r["not_measured"],
            "embedding_cache": r.get("embedding_cache"),
        }
    share_size = str(ORCHESTRATION_TARGET_SIZE) if str(ORCHESTRATION_TARGET_SIZE) in sizes else largest
    summary = {
        "bench": "scale",
        "overhead_ms_per_task": sizes[largest]["overhead_ms_per_task"],
        "sizes": sizes,
        "orchestration_share": sizes[share_size]["orchestration_share"],
        **({"answers": sizes[share_size]["answers"], "objects_written": sizes[share_size]["objects_written"]}
           if "answers" in sizes[share_size] else {}),
        "auditee": args.auditee,
        "batch_size": args.batch_size,
        "max_workers": args.max_workers,
        "bootstrap_samples": args.bootstrap_samples,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in os.getloadavg()]},
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
