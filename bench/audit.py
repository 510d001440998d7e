"""Benchmark: the whole demo audit cold, then warm (everything cached), side by side in one run.

What runs: ``flows.audit.dataset_audit`` on the demo's inputs (``cflab demo``: the 24-row
sample dataset, the tiny random-weight models, img2img at 64 px, 248 work items = 176 images), against a
temporary Prefect server (``prefect_test_harness``: a real API server in a subprocess,
SQLite in a temporary folder).

* setup (not timed): a fresh temporary folder holding a fresh demo home (sample dataset,
  tiny models, the demo config: ``counterfactual_lab.demo.inputs.prepare_demo``), a fresh output
  folder and a fresh ``PREFECT_HOME`` (Prefect's result storage and cache-key records);
* **cold**: a new Python process runs the audit once into the empty output folder;
* **warm**: another new process runs the same audit again, same output folder and
  ``PREFECT_HOME`` (a new Prefect database, as the harness starts a fresh one): every image
  is in the content-addressed store and every generation batch has a cache record. A new
  process is what a worker gives each flow run, so model loads and in-memory embedding
  caches are *not* warm; the cold process also reruns the audit in place and reports that
  as ``warm_same_process_s`` (models loaded, embeddings cached).

Each process imports everything first (Prefect, the flows, Great Expectations, torch,
diffusers, transformers: ``import_s``) and starts its Prefect server (``server_start_s``);
neither is in the timings, which cover the ``dataset_audit(...)`` call only.

``prefect_overhead_s`` = the audit's wall time minus the time spent inside library calls.
Library time is measured by replacing, before ``flows.audit`` and ``tasks`` are imported,
every ``counterfactual_lab`` function that the flow and its tasks call (see
``LIBRARY_CALLS``) with a wrapper that records a (start, end) interval. Tasks run on two
threads at once, so the library time is the length of the *union* of those intervals (wall
time during which at least one library call was running), not their sum. Everything else
is Prefect's: creating flow and task runs over the API, cache-key lookups, result
persistence, state changes, logs, artifacts. ``prefect_overhead_s`` is the cold run's;
``prefect_overhead_warm_s`` the warm one's.

    python bench/audit.py                 # the figures in bench/RESULTS.md
    python bench/audit.py --profile       # also sample where the warm run spends its time

Last line JSON: ``{"bench": "audit", "cold_s", "warm_s", "ratio": warm/cold,
"prefect_overhead_s", ...}``. Target: warm <= 10% of cold.
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import json
import os
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

# (module, attribute) of every library call the audit flow and its tasks make. Patched on
# the module that defines it *and* re-exported where the flow/tasks import it from, before
# those modules are imported, so their `from ... import name` binds the wrapper.
LIBRARY_CALLS: list[tuple[str, str]] = [
    ("counterfactual_lab.config.audit_config", "AuditConfig.from_yaml"),
    ("counterfactual_lab.config.audit_config", "AuditConfig.dataset_spec"),
    ("counterfactual_lab.ingest.fingerprints", "dataset_fingerprint"),
    ("counterfactual_lab.models.identity", "model_identity"),
    ("counterfactual_lab.runs.location", "run_id_for"),
    ("counterfactual_lab.ingest.validation", "ingest_and_validate"),
    ("counterfactual_lab.ingest.validation", "write_validation_outputs"),
    ("counterfactual_lab.plan.work_items", "plan_work_items"),
    ("counterfactual_lab.plan.work_items", "chunk"),
    ("counterfactual_lab.tasks.generate", "generate_batch"),
    ("counterfactual_lab.generation.candidates", "candidates_frame"),
    ("counterfactual_lab.models.clip", "ClipEmbedder.load"),
    ("counterfactual_lab.judge.edits", "judge_candidates"),
    ("counterfactual_lab.evaluate.pool", "build_evaluation_pool"),
    ("counterfactual_lab.evaluate.pool", "pool_from_counterfactual_sets"),
    ("counterfactual_lab.evaluate.pool", "predict"),
    ("counterfactual_lab.evaluate.pool", "retrieval_scores"),
    ("counterfactual_lab.metrics", "compute_metrics"),
    ("counterfactual_lab.generation.records", "generation_counts"),
    ("counterfactual_lab.runs.accounting", "row_accounting"),
    ("counterfactual_lab.report.publish", "publish_run"),
    ("counterfactual_lab.report.markdown", "summary_markdown"),
    ("counterfactual_lab.report.findings", "headline_table"),
]

# Heavy imports done before the timer (the flow would otherwise pay them lazily, inside the
# first run only, which would flatter the warm run).
PREIMPORTS = [
    "counterfactual_lab.flows.audit",
    "great_expectations",
    "torch",
    ("diffusers", "StableDiffusionImg2ImgPipeline"),
    ("transformers", "CLIPModel"),
    ("transformers", "CLIPProcessor"),
    ("transformers", "AutoModel"),
    ("transformers", "AutoProcessor"),
]


# -- library timing -----------------------------------------------------------------------------
class LibraryTimer:
    """Records the (start, end, name) interval of every wrapped library call, on any thread."""

    def __init__(self) -> None:
        self.intervals: list[tuple[float, float, str]] = []
        self._lock = threading.Lock()

    def wrap(self, name: str, function):
        timer = self

        @functools.wraps(function)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                end = time.perf_counter()
                with timer._lock:
                    timer.intervals.append((start, end, name))

        timed.__wrapped_by_bench__ = True
        return timed

    def reset(self) -> None:
        with self._lock:
            self.intervals.clear()

    def union_seconds(self, start: float, end: float) -> float:
        """Seconds in [start, end] covered by at least one recorded interval."""
        spans = sorted((max(s, start), min(e, end)) for s, e, _ in self.intervals if e > start and s < end)
        total, current_start, current_end = 0.0, None, None
        for s, e in spans:
            if current_end is None or s > current_end:
                if current_end is not None:
                    total += current_end - current_start
                current_start, current_end = s, e
            else:
                current_end = max(current_end, e)
        if current_end is not None:
            total += current_end - current_start
        return total

    def timeline(self, start: float) -> list[tuple[float, float, str]]:
        """Every call as (start, end) seconds after ``start``, in start order."""
        return [(round(s - start, 3), round(e - start, 3), name) for s, e, name in sorted(self.intervals)]

    def by_name(self) -> dict[str, dict[str, float]]:
        """Per function: calls and summed seconds (summed over threads, nested calls counted twice)."""
        table: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"calls": 0, "seconds": 0.0})
        for s, e, name in self.intervals:
            table[name]["calls"] += 1
            table[name]["seconds"] += e - s
        return dict(sorted(table.items(), key=lambda kv: -kv[1]["seconds"]))


def install_library_timers(timer: LibraryTimer) -> None:
    """Wrap every function of LIBRARY_CALLS; must run before flows/ and tasks/ are imported."""
    for module_name in ("counterfactual_lab.flows", "counterfactual_lab.flows.audit", "counterfactual_lab.tasks.generate", "counterfactual_lab.tasks.judge", "counterfactual_lab.tasks.evaluate", "counterfactual_lab.tasks.validate"):
        if module_name in sys.modules:
            raise RuntimeError(f"{module_name} was imported before the library timers were installed")
    for module_name, attribute in LIBRARY_CALLS:
        module = importlib.import_module(module_name)
        name = f"{module_name.rsplit('.', 1)[-1]}.{attribute}"
        if "." in attribute:  # a method: Class.method (classmethods and plain methods)
            class_name, method_name = attribute.split(".")
            cls = getattr(module, class_name)
            raw = cls.__dict__[method_name]
            if isinstance(raw, classmethod):
                setattr(cls, method_name, classmethod(timer.wrap(name, raw.__func__)))
            else:
                setattr(cls, method_name, timer.wrap(name, raw))
            continue
        original = getattr(module, attribute)
        wrapped = timer.wrap(name, original)
        setattr(module, attribute, wrapped)
        # Also where it is defined (a package may re-export it from a submodule).
        defining = sys.modules.get(getattr(original, "__module__", ""), None)
        if defining is not None and getattr(defining, attribute, None) is original:
            setattr(defining, attribute, wrapped)


# -- a small sampling profiler (all threads) ---------------------------------------------------
class ThreadSampler:
    """Samples every thread's stack every ``interval`` seconds while running.

    ``cumulative()`` counts, per (file, function), the samples in which it is on some stack,
    so ``samples * interval`` approximates the wall seconds spent in or under it summed over
    the threads that were busy (idle pool threads waiting on a queue are skipped).
    """

    IDLE = {("threading.py", "wait"), ("queue.py", "get"), ("selectors.py", "select"),
            ("threading.py", "_wait_for_tstate_lock"), ("_base.py", "result"), ("base_events.py", "_run_once"),
            ("thread.py", "_worker"), ("threading.py", "join"),
            # Prefect's flow heartbeat thread sleeps in this Python frame between beats.
            ("flow_engine.py", "heartbeat_loop")}

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.cumulative_counts: collections.Counter = collections.Counter()
        self.leaf_counts: collections.Counter = collections.Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                leaf = (Path(frame.f_code.co_filename).name, frame.f_code.co_name)
                if leaf in self.IDLE:
                    continue
                self.samples += 1
                self.leaf_counts[self._label(frame)] += 1
                seen = set()
                while frame is not None:
                    label = self._label(frame)
                    if label not in seen:
                        seen.add(label)
                        self.cumulative_counts[label] += 1
                    frame = frame.f_back

    @staticmethod
    def _label(frame) -> str:
        filename = frame.f_code.co_filename
        for marker in ("site-packages/", str(REPO_ROOT) + "/"):
            if marker in filename:
                filename = filename.split(marker, 1)[1]
                break
        return f"{filename}:{frame.f_code.co_name}"

    def report(self, top: int = 40) -> dict[str, Any]:
        seconds = lambda n: round(n * self.interval, 2)  # noqa: E731
        return {
            "interval_s": self.interval,
            "cumulative_top": [(label, seconds(n)) for label, n in self.cumulative_counts.most_common(top)],
            "leaf_top": [(label, seconds(n)) for label, n in self.leaf_counts.most_common(top)],
        }


# -- one measured process ----------------------------------------------------------------------
def child(args: argparse.Namespace) -> dict[str, Any]:
    timer = LibraryTimer()
    install_library_timers(timer)

    t0 = time.perf_counter()
    for entry in PREIMPORTS:
        if isinstance(entry, tuple):
            getattr(importlib.import_module(entry[0]), entry[1])
        else:
            importlib.import_module(entry)
    import_s = time.perf_counter() - t0

    from prefect.testing.utilities import prefect_test_harness

    from counterfactual_lab.flows.audit import dataset_audit

    result: dict[str, Any] = {"import_s": round(import_s, 2)}
    t0 = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        result["server_start_s"] = round(time.perf_counter() - t0, 2)
        runs = ["main"] + (["same_process"] if args.rerun_in_process else [])
        for name in runs:
            timer.reset()
            sampler = ThreadSampler() if args.profile else None
            start = time.perf_counter()
            if sampler:
                with sampler:
                    run_uri = dataset_audit(config_uri=args.config, output_uri=args.out)
            else:
                run_uri = dataset_audit(config_uri=args.config, output_uri=args.out)
            end = time.perf_counter()
            library_s = timer.union_seconds(start, end)
            manifest = json.loads((Path(run_uri) / "manifest.json").read_text())
            result[name] = {
                "wall_s": round(end - start, 3),
                "library_s": round(library_s, 3),
                "prefect_overhead_s": round(end - start - library_s, 3),
                "timeline": timer.timeline(start),
                "library_calls": {k: {"calls": v["calls"], "seconds": round(v["seconds"], 3)} for k, v in timer.by_name().items()},
                "cache_hits": manifest.get("cache_hits"),
                "generation_counts": manifest.get("generation_counts"),
                "run_uri": run_uri,
            }
            if sampler:
                result[name]["profile"] = sampler.report()
    return result


def run_child(mode: str, config: Path, out: Path, prefect_home: Path, *, profile: bool, rerun_in_process: bool) -> dict[str, Any]:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)  # the harness starts its own server
    env.pop("PREFECT_PROFILES_PATH", None)
    command = [sys.executable, __file__, "--child", mode, "--config", str(config), "--out", str(out)]
    if profile:
        command.append("--profile")
    if rerun_in_process:
        command.append("--rerun-in-process")
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=str(REPO_ROOT), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"the {mode} audit process failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - started, 2)
    return result


def print_run(label: str, run: dict[str, Any], show_timeline: bool = False) -> None:
    print(f"\n{label}: wall {run['wall_s']:.2f} s = library {run['library_s']:.2f} s + Prefect {run['prefect_overhead_s']:.2f} s"
          f"   (cache hits: {run['cache_hits']})")
    for name, row in run["library_calls"].items():
        print(f"  {name:<40} {row['calls']:>4} calls {row['seconds']:>8.3f} s")
    if show_timeline:
        print("  timeline (s after the flow call; gaps are Prefect's):")
        previous_end = 0.0
        for start, end, name in run["timeline"]:
            gap = start - previous_end
            print(f"    {start:7.2f} .. {end:7.2f}  {name:<36} (gap before: {gap:+.2f})")
            previous_end = max(previous_end, end)
        print(f"    {run['wall_s']:7.2f}  flow call returns (gap before: {run['wall_s'] - previous_end:+.2f})")
    if "profile" in run:
        print("  sampled (all busy threads), cumulative seconds:")
        for label, seconds in run["profile"]["cumulative_top"]:
            print(f"    {seconds:>7.2f}  {label}")
        print("  sampled, innermost frame:")
        for label, seconds in run["profile"]["leaf_top"][:20]:
            print(f"    {seconds:>7.2f}  {label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", help="folder for the demo home, output and PREFECT_HOME (default: a temporary folder, removed)")
    parser.add_argument("--profile", action="store_true", help="sample all threads' stacks during the warm run")
    parser.add_argument("--child", choices=["cold", "warm"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--rerun-in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        try:
            result = child(args)
        except Exception:
            traceback.print_exc()
            raise SystemExit(1)
        print(json.dumps(result))
        return

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cflab-bench-audit-"))
    try:
        from counterfactual_lab.demo.inputs import prepare_demo

        home, out, prefect_home = work / "home", work / "out", work / "prefect-home"
        for path in (home, out, prefect_home):
            if path.exists():
                shutil.rmtree(path)
        t0 = time.perf_counter()
        inputs = prepare_demo(home=home, out_uri=str(out))  # dataset + tiny models: not timed
        print(f"setup (sample dataset, tiny models; not timed): {time.perf_counter() - t0:.1f} s under {work}")

        cold = run_child("cold", inputs.config_path, out, prefect_home, profile=False, rerun_in_process=True)
        warm = run_child("warm", inputs.config_path, out, prefect_home, profile=args.profile, rerun_in_process=False)

        for label, result in (("cold", cold), ("warm", warm)):
            print(f"{label} process: {result['process_s']:.1f} s in all (imports {result['import_s']:.1f} s, "
                  f"Prefect server start {result['server_start_s']:.1f} s, not timed)")
        print_run("cold (empty store, empty Prefect cache)", cold["main"])
        print_run("warm, new process (the measured warm_s)", warm["main"], show_timeline=True)
        print_run("warm, same process as cold (models loaded, embeddings cached)", cold["same_process"])

        cold_s, warm_s = cold["main"]["wall_s"], warm["main"]["wall_s"]
        print(json.dumps({
            "bench": "audit",
            "cold_s": cold_s,
            "warm_s": warm_s,
            "ratio": round(warm_s / cold_s, 3),
            "prefect_overhead_s": cold["main"]["prefect_overhead_s"],
            "prefect_overhead_warm_s": warm["main"]["prefect_overhead_s"],
            "library_cold_s": cold["main"]["library_s"],
            "library_warm_s": warm["main"]["library_s"],
            "warm_same_process_s": cold["same_process"]["wall_s"],
            "warm_cache_hits": warm["main"]["cache_hits"],
        }))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
