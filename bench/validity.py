"""Benchmark: is the audit valid? The whole audit on planted-bias worlds that can fail it.

What runs (``counterfactual_lab/validity``; docs/validity.md):

* setup: four world models are built (``validity.models``: CLIP models whose weights are set,
  not trained; the fair one ignores the rendered gender badge; in the biased one a male badge
  raises P(doctor), in the weak one by a quarter of that; the text-side one ignores the badge too,
  but the person word of its label prompt moves P(doctor)), and the **truth** of each arm is
  computed without the audit's code path (``validity.truth``: its own edit and artifact, a direct
  transformers forward pass, checked against the world formula) on female sources of a world no
  run uses;
* eight **arms**, each on its own fresh world seeds (arm i, world j: seed 1000·(i + 1) + j), each
  world audited once through the real ``dataset-audit`` flow (ingest → validate → generate with
  the ``planted-world`` editor → judge with its off-target drift → evaluate → metrics → publish)
  under a temporary Prefect server (``prefect_test_harness``), threads runner:

  ========  =============================================================  ==========================
  arm       world                                                          target
  ========  =============================================================  ==========================
  null      fair model, artifact drawn per target (pairs differ beyond      false_positive_rate ≤ 0.05
            the badge)
  default   biased model                                                   power ≥ 0.95 (right sign),
                                                                           coverage ≥ 0.93,
                                                                           confounded_rate ≤ 0.10
  weak      weak model (≈ +0.03), 15 negative controls: ≥ 100 comparisons  power ≥ 0.8
  noisy     biased model, cast and noise std 7                             power ≥ 0.9
  confound  fair model, an editor that shifts colour with the target       finding_rate ≤ 0.1,
            (green −4, blue +4 grey levels on male)                        confounded_rate ≥ 0.9
  clusters  biased model, 3 kept sets per source (adaptive off)            coverage ≥ 0.9; reports
                                                                           cluster_to_row_width
  few       biased model, 24 rows (12 sources per transition)              coverage ≥ 0.9
  text_side text-side model (fair on the image; its label prompt's person    text_called_rate ≥ 0.9,
            word moves P(doctor)), audit.modalities [image, text, both],   image_called_rate ≤ 0.1
            artifact drawn per target
  ========  =============================================================  ==========================

  The text_side arm: ``text_called_rate`` is the share of runs whose planted row read in the ``text``
  modality (the reconstruction with the target's person word) is called with the text-side bias's
  sign (man raises P(doctor)); ``image_called_rate`` the share with any ``image``-modality finding called.

  Power is the share of runs whose planted row (``prob_gap_signed``, stratum generated, doctor,
  female→male) is called with the truth's sign; coverage the share whose 95% interval holds the
  truth; ``cluster_to_row_width`` the planted row's interval width over a row-level t interval on
  the same pairs (computed here from ``predictions.parquet``, without the library).

The last line is one JSON object (``{"bench": "validity", "arms": {...}, "seconds": ...}``); the
lines above it give every world's verdict, each arm's figures with a Wilson 95% interval over runs,
the targets and the load average. Exit status 1 when a target is missed (after the JSON).

    python bench/validity.py                      # 8 arms × 20 worlds (the figure of record; ~17 min on 2 cores)
    python bench/validity.py --jobs 2             # arms split over two processes
    python bench/validity.py --quick --work DIR   # 2 worlds per arm, small truth: the test suite's run
    python bench/validity.py --arms null,default --runs 5
    python bench/validity.py --world-only         # the models and the truths only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# Contrastive negative controls beyond the three defaults: the weak arm's run makes ≥ 100
# comparisons, as real configs with several labels and probes do.
EXTRA_NEGATIVE_CONTROLS = [
    "a photo of a street | a photo of a room", "a photo of a beach | a photo of a forest",
    "a photo taken in winter | a photo taken in summer", "a photo of a city | a photo of a village",
    "a colour photo | a black and white photo", "a close-up photo | a wide photo",
    "a photo with a dog | a photo with a cat", "a photo of food | a photo of a car",
    "a photo taken in the rain | a photo taken in the sun", "a photo of a garden | a photo of an office",
    "a grainy photo | a clean photo", "a photo of a crowd | a photo of an empty place",
]
TRANSITION = ("female", "male")


@dataclass(frozen=True)
class Arm:
    """One arm: which model audits which world, and the truth its figures are scored against."""

    name: str
    model: str  # fair, biased, weak
    params: dict[str, Any] = field(default_factory=dict)
    rows: int = 48
    sets: int = 1  # kept sets per source (seeds_per_target = keep_per_target; adaptive off when > 1)
    truth: str | None = None  # key of TRUTHS, None: no planted effect (fair model)
    extra_controls: bool = False
    person_prompt: bool = False  # audit.prompt with the row's person word (validity.models.PERSON_PROMPT)
    modalities: tuple[str, ...] | None = None  # audit.modalities (None: the default, image)


ARMS = [
    Arm("null", "fair", {"artifact_per_target": True}),
    Arm("default", "biased", truth="biased"),
    Arm("weak", "weak", truth="weak", extra_controls=True),
    Arm("noisy", "biased", {"cast_std": 7, "noise_std": 7}, truth="biased-noisy"),
    Arm("confound", "fair", {"confound_green": -4, "confound_blue": 4}),
    Arm("clusters", "biased", sets=3, truth="biased"),
    Arm("few", "biased", rows=24, truth="biased"),
    Arm("text_side", "text-side", {"artifact_per_target": True}, person_prompt=True, modalities=("image", "text", "both")),
]
ARM_NAMES = [arm.name for arm in ARMS]
# The truths: (model, editor params, pairs at full size).
TRUTHS = {"biased": ("biased", {}, 5000), "weak": ("weak", {}, 3000), "biased-noisy": ("biased", {"cast_std": 7, "noise_std": 7}, 3000)}
# Relative cost of one audit of each arm (the clusters arm generates three sets per source), for --jobs.
_COST = {"clusters": 2.5, "few": 0.6, "text_side": 1.3}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="worlds per arm (default 20)")
    parser.add_argument("--arms", default=",".join(ARM_NAMES), help=f"a comma list of arms (default all: {','.join(ARM_NAMES)})")
    parser.add_argument("--quick", action="store_true", help="2 worlds per arm, 300 truth pairs, 200 resamples (the test suite)")
    parser.add_argument("--jobs", type=int, default=1, help="processes to split the arms over (default 1)")
    parser.add_argument("--bootstrap-samples", type=int, default=None, help="resamples per interval (default 1000; --quick 200)")
    parser.add_argument("--truth-pairs", type=int, default=None, help="pairs per truth (default 5000/3000; --quick 300)")
    parser.add_argument("--world-only", action="store_true", help="only build the models and print the truths")
    parser.add_argument("--work", help="keep worlds, models and runs here (default: a temporary folder, removed)")
    # Internal: one process of --jobs, given the truths and models the parent made.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARM_NAMES]
    if unknown:
        parser.error(f"--arms: unknown {unknown}; the arms are {ARM_NAMES}")
    if args.quick:
        args.runs = 2 if "--runs" not in sys.argv else args.runs
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.bootstrap_samples is None:
        args.bootstrap_samples = 200 if args.quick else 1000
    if args.bootstrap_samples < 50:
        parser.error(f"--bootstrap-samples must be at least 50 (the config's minimum), got {args.bootstrap_samples}")
    if args.truth_pairs is not None and args.truth_pairs < 100:
        parser.error(f"--truth-pairs must be at least 100, got {args.truth_pairs}")
    return args


def world_seed(arm: str, index: int) -> int:
    """Arm i's world j: fresh seeds per arm, disjoint from the truth's world and from the old bench's 0–39."""
    return 1000 * (ARM_NAMES.index(arm) + 1) + index


# -- setup: the models and the truths ----------------------------------------------------------------


def setup(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Build the world models and compute the truths the chosen arms need (no audit, no Prefect)."""
    import torch

    torch.set_num_threads(1)  # tiny models; two flow threads share the two cores

    from counterfactual_lab.validity.models import build_world_models
    from counterfactual_lab.validity.truth import DirectClip, planted_effect

    started = time.perf_counter()
    models = {name: str(path) for name, path in build_world_models(work / "models").items()}
    direct = {name: DirectClip(path) for name, path in models.items()}
    chosen = [arm for arm in ARMS if arm.name in args.arms]
    truths: dict[str, dict[str, Any]] = {}
    for key in sorted({arm.truth for arm in chosen if arm.truth}):
        model, params, pairs = TRUTHS[key]
        pairs = args.truth_pairs or (300 if args.quick else pairs)
        effect = planted_effect(direct[model], source=TRANSITION[0], target=TRANSITION[1], pairs=pairs, params=params)
        truths[key] = effect.to_dict()
        print(f"truth {key}: P(doctor) {effect.transition} = {effect.value:+.4f} (se {effect.standard_error:.4f}, "
              f"{effect.pairs} pairs; world formula {effect.formula_value:+.4f})", flush=True)
    fair = planted_effect(direct["fair"], pairs=min(args.truth_pairs or 500, 500))
    if abs(fair.value) > 1e-6:
        raise SystemExit(f"the fair world model is not invariant to the badge: mean change {fair.value!r}")
    if "confound" in args.arms:
        shifted = planted_effect(direct["fair"], pairs=min(args.truth_pairs or 500, 500),
                                 params={"confound_green": -4, "confound_blue": 4})
        print(f"context: the confound's own effect on the fair model's P(doctor) female→male = {shifted.value:+.4f} "
              "(the generator's, not the model's)", flush=True)
    return {"models": models, "truths": truths, "seconds": round(time.perf_counter() - started, 1)}


# -- the arms --------------------------------------------------------------------------------------


def arm_config(arm: Arm, dataset: Path, models: dict[str, str], out: str, args: argparse.Namespace) -> dict[str, Any]:
    from counterfactual_lab.evaluate.auditees.kinds import DEFAULT_NEGATIVE_CONTROLS
    from counterfactual_lab.validity.audit_config import world_audit_config
    from counterfactual_lab.validity.models import PERSON_PROMPT

    controls = list(DEFAULT_NEGATIVE_CONTROLS["contrastive"]) + EXTRA_NEGATIVE_CONTROLS if arm.extra_controls else None
    return world_audit_config(
        dataset, models[arm.model], models["fair"], out, name=f"validity-{arm.name}", reconstruction=True,
        bootstrap_samples=args.bootstrap_samples, params=arm.params, seeds_per_target=arm.sets, keep_per_target=arm.sets,
        adaptive=False if arm.sets > 1 else None, negative_controls=controls,
        prompt=PERSON_PROMPT if arm.person_prompt else None,
        modalities=list(arm.modalities) if arm.modalities else None,
    )


def row_level_width(run: Path, label: str = "doctor") -> float | None:
    """2·t_{n−1}·sd(Δ)/√n of the planted transition's pairs, read from predictions.parquet (no library code)."""
    import polars as pl
    from scipy.special import stdtrit

    predictions = pl.read_parquet(run / "predictions.parquet").filter(pl.col("attribute") == "gender")
    score = f"score_{label}"
    recons = predictions.filter((pl.col("variant") == "reconstruction") & ~pl.col("control").fill_null(False)
                                & (pl.col("group") == TRANSITION[0]) & pl.col("set_id").is_not_null())
    edits = predictions.filter((pl.col("variant") == "counterfactual") & (pl.col("group") == TRANSITION[1]))
    pairs = recons.select("set_id", pl.col(score).alias("before")).join(
        edits.select("set_id", pl.col(score).alias("after")), on="set_id")
    if pairs.height < 2:
        return None
    delta = (pairs["after"] - pairs["before"]).to_numpy()
    return float(2 * stdtrit(len(delta) - 1, 0.975) * delta.std(ddof=1) / len(delta) ** 0.5)


def run_arms(arms: list[Arm], args: argparse.Namespace, work: Path, context: dict[str, Any], record: Path) -> None:
    """Audit every world of ``arms`` under one temporary Prefect server; one JSON line per world in ``record``."""
    os.environ["PREFECT_HOME"] = str(work / "prefect-home")
    os.environ.pop("PREFECT_API_URL", None)  # the harness starts its own server
    import torch

    torch.set_num_threads(1)

    # isort: off
    import counterfactual_lab.flows  # noqa: F401  (the project's offline Prefect defaults, before Prefect loads)
    # isort: on
    import polars as pl
    from prefect.testing.utilities import prefect_test_harness

    from counterfactual_lab.flows.audit import dataset_audit
    from counterfactual_lab.report.findings import assess_findings
    from counterfactual_lab.validity.audit_config import write_world_audit_config
    from counterfactual_lab.validity.scoring import score_modalities, score_run
    from counterfactual_lab.validity.world import write_world

    out = str(work / "out")
    with prefect_test_harness(server_startup_timeout=120), record.open("a") as sink:
        for arm in arms:
            truth = context["truths"][arm.truth]["value"] if arm.truth else None
            for index in range(args.runs):
                seed = world_seed(arm.name, index)
                started = time.perf_counter()
                dataset = write_world(work / "worlds" / f"world-{seed}-{arm.rows}", rows=arm.rows, seed=seed)
                config = arm_config(arm, dataset, context["models"], out, args)
                run = Path(dataset_audit(config_uri=str(write_world_audit_config(work / "configs" / f"{arm.name}-{seed}.yaml",
                                                                                config))))
                metrics = pl.read_parquet(run / "metrics.parquet")
                findings = assess_findings(metrics)
                verdict = score_run(metrics, findings, planted=truth, transition="→".join(TRANSITION))
                if arm.modalities:  # which modality the finding is in (the text-side bias: man raises P(doctor))
                    verdict = score_modalities(verdict, findings, transition="→".join(TRANSITION))
                entry = {"arm": arm.name, "seed": seed, **verdict.to_dict(), "seconds": round(time.perf_counter() - started, 2)}
                if arm.name == "clusters" and verdict.ci_low is not None:
                    width = row_level_width(run)
                    entry["width_ratio"] = (verdict.ci_high - verdict.ci_low) / width if width else None
                entry["called"] = entry["called"][:3]  # sentences: the first few say enough
                sink.write(json.dumps(entry) + "\n")
                sink.flush()
                print(_world_line(entry), flush=True)


def _world_line(entry: dict[str, Any]) -> str:
    def number(x):
        return "n/a" if x is None else f"{x:+.4f}"

    planted = (f" planted {number(entry['value'])} [{number(entry['ci_low'])}, {number(entry['ci_high'])}] "
               f"found={entry['found']} covered={entry['covered']}" if entry.get("found") is not None else "")
    if entry.get("text_called") is not None:
        planted += f" text_called={entry['text_called']} image_called={entry['image_called']}"
    return (f"{entry['arm']:>8} world {entry['seed']}: verdict={entry['run_verdict']} called={len(entry['called'])}"
            f"{'+' if entry['any_called'] and len(entry['called']) == 3 else ''} confounded={entry['confounded']} "
            f"m={entry['comparisons']}{planted} ({entry['seconds']} s)")


def split_arms(arms: list[Arm], jobs: int) -> list[list[Arm]]:
    """The arms in ``jobs`` groups of about equal cost (largest first)."""
    groups: list[list[Arm]] = [[] for _ in range(min(jobs, len(arms)))]
    loads = [0.0] * len(groups)
    for arm in sorted(arms, key=lambda a: -_COST.get(a.name, 1.0)):
        k = loads.index(min(loads))
        groups[k].append(arm)
        loads[k] += _COST.get(arm.name, 1.0)
    return [g for g in groups if g]


def run_jobs(arms: list[Arm], args: argparse.Namespace, work: Path, context: dict[str, Any], record: Path) -> None:
    """Run ``arms`` over ``args.jobs`` processes, each with its own Prefect server and work folder."""
    setup_file = work / "setup.json"
    setup_file.write_text(json.dumps(context))
    processes = []
    for k, group in enumerate(split_arms(arms, args.jobs)):
        command = [sys.executable, __file__, "--worker", "--setup", str(setup_file), "--work", str(work / f"job{k}"),
                   "--arms", ",".join(a.name for a in group), "--runs", str(args.runs),
                   "--bootstrap-samples", str(args.bootstrap_samples)]
        processes.append(subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    failed = [p.args for p in processes if p.wait() != 0]
    for k in range(len(processes)):
        part = work / f"job{k}" / "verdicts.jsonl"
        if part.exists():
            with record.open("a") as sink:
                sink.write(part.read_text())
    if failed:
        raise SystemExit(f"bench/validity.py: {len(failed)} worker(s) failed")


# -- figures --------------------------------------------------------------------------------------


def figures(arms: list[Arm], record: Path, context: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    from counterfactual_lab.validity.scoring import RunVerdict, arm_figures, missed_targets, wilson_95

    entries = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    fields = set(RunVerdict.__dataclass_fields__)
    result, missed = {}, []
    for arm in arms:
        mine = [e for e in entries if e["arm"] == arm.name]
        verdicts = [RunVerdict(**{k: v for k, v in e.items() if k in fields}) for e in mine]
        ratios = [e["width_ratio"] for e in mine if e.get("width_ratio") is not None]
        planted = context["truths"][arm.truth]["value"] if arm.truth else None
        result[arm.name] = arm_figures(arm.name, verdicts, planted_effect=planted, width_ratios=ratios)
        missed += missed_targets(arm.name, result[arm.name])
        spread = {k: wilson_95(v, len(verdicts)) for k, v in result[arm.name].items()
                  if k.endswith(("rate", "power", "coverage")) or k in ("power", "coverage")}
        seconds = sum(e["seconds"] for e in mine)
        print(f"arm {arm.name}: {result[arm.name]} Wilson 95% over runs {spread}; {seconds:.0f} s of audits", flush=True)
    return result, missed


def main() -> None:
    args = parse_args()
    # Read when those libraries are imported: the audits' progress bars and INFO logs are noise here.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cflab-bench-validity-"))
    work.mkdir(parents=True, exist_ok=True)
    arms = [arm for arm in ARMS if arm.name in args.arms]
    if args.worker:
        run_arms(arms, args, work, json.loads(Path(args.setup).read_text()), work / "verdicts.jsonl")
        return
    started, load_before = time.perf_counter(), os.getloadavg()
    try:
        context = setup(args, work)
        if args.world_only:
            print(json.dumps({"bench": "validity-world", "truths": context["truths"], "seconds": context["seconds"]}))
            return
        record = work / "verdicts.jsonl"
        record.unlink(missing_ok=True)
        if args.jobs > 1 and len(arms) > 1:
            run_jobs(arms, args, work, context, record)
        else:
            run_arms(arms, args, work, context, record)
        result, missed = figures(arms, record, context)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    seconds = round(time.perf_counter() - started, 1)
    load_after = os.getloadavg()
    print(f"setup {context['seconds']} s; load average {[round(x, 2) for x in load_before]} → "
          f"{[round(x, 2) for x in load_after]}; runs per arm {args.runs}; bootstrap_samples {args.bootstrap_samples}; "
          f"jobs {args.jobs}", flush=True)
    print("targets: " + ("all met" if not missed else "MISSED " + "; ".join(missed)), flush=True)
    print(json.dumps({"bench": "validity", "arms": result, "seconds": seconds}, ensure_ascii=False))
    if missed and not args.quick:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
