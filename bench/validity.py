"""Benchmark: is the audit valid? The whole audit on a planted-bias world where the truth is known.

What runs (``counterfactual_lab/validity``; README "Is the audit valid?"):

* setup: the two world models are built (``validity.models``: CLIP models whose weights are
  set, not trained; the fair one ignores the rendered gender badge, the biased one's
  P(doctor) rises when the badge turns male), and the **planted effect** is measured from
  the biased model: the mean of P(doctor | male edit) − P(doctor | female reconstruction)
  over ``--truth-pairs`` female sources of a world no run uses (``validity.truth``). The
  fair model's effect is checked to be exactly 0;
* for each of ``--runs`` seeds, a new world of ``--rows`` rows (half female, half male), and
  three audits through the real ``dataset-audit`` flow (ingest → validate → generate with the
  ``planted-world`` editor → judge → evaluate → metrics → publish), in this one process, under
  one temporary Prefect server (``prefect_test_harness``), threads runner:
  the fair model and the biased model with ``generation.reconstruction: true`` (generated
  vs generated, the default), and the fair model with ``reconstruction: false`` (the old
  design: originals vs generated images);
* each run's ``metrics.parquet`` goes through ``findings.assess_findings`` and is scored
  (``validity.scoring``): any called finding, whether the planted ``prob_gap_signed`` row
  (stratum ``generated``, label doctor, group female→male) is called, and whether its
  interval contains the planted effect.

Figures: ``false_positive_rate`` (share of fair runs with any called finding), ``power``
(share of biased runs where the planted finding is called), ``coverage`` (share of biased
runs whose interval contains the planted effect), ``real_vs_generated_false_positive_rate``
(the fair model, reconstruction off). Targets: false-positive rate ≤ 0.05 (≤ 0.10 on 20
runs), power ≥ 0.9 at the stated sample size (``--rows`` / 2 sources per transition),
coverage ≥ 0.9.

    python bench/validity.py                    # 20 worlds × 48 rows, 60 audits (minutes on 2 cores)
    python bench/validity.py --world-only       # only the models and the world's truth (any code base)
    python bench/validity.py --runs 40 --rows 32

It needs issue 8's generated-vs-generated audit: ``generation.reconstruction`` in the config
and ``counterfactual_lab.metrics.findings.assess_findings``; without them it stops at once with a
message saying what is missing. Last line JSON: ``{"bench": "validity", "runs",
"false_positive_rate", "power", "coverage", "real_vs_generated_false_positive_rate", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def missing_prerequisites() -> list[str]:
    """What this code base lacks for the bench (empty when it can run)."""
    from counterfactual_lab.metrics import findings
    from counterfactual_lab.config.audit_config import GenerationSection

    missing = []
    if not hasattr(findings, "assess_findings"):
        missing.append("counterfactual_lab.metrics.findings.assess_findings (called findings beside their controls)")
    if "reconstruction" not in GenerationSection.model_fields:
        missing.append("the generation.reconstruction config key (generated-vs-generated pairs)")
    return missing


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="worlds (seeds 0..runs-1), each audited three times (default 20)")
    parser.add_argument("--rows", type=int, default=48, help="rows per world, half female, half male (default 48)")
    parser.add_argument("--bootstrap-samples", type=int, default=200, help="bootstrap resamples per interval (default 200)")
    parser.add_argument("--truth-pairs", type=int, default=2000, help="pairs measuring the planted effect (default 2000)")
    parser.add_argument("--world-only", action="store_true",
                        help="only build the models and print what is true in the world (runs on any code base)")
    parser.add_argument("--work", help="keep worlds, models and runs here (default: a temporary folder, removed)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    if args.rows < 4 or args.rows % 2:
        parser.error(f"--rows must be an even number of at least 4 (half female, half male), got {args.rows}")
    if args.bootstrap_samples < 50:
        parser.error(f"--bootstrap-samples must be at least 50 (the config's minimum), got {args.bootstrap_samples}")
    if args.truth_pairs < 100:
        parser.error(f"--truth-pairs must be at least 100, got {args.truth_pairs}")
    return args


def audit(config: dict[str, Any], path: Path) -> tuple[Any, Any, float]:
    """Run one audit through the flow; returns (metrics, findings, seconds)."""
    import polars as pl

    from counterfactual_lab.report.findings import assess_findings
    from counterfactual_lab.validity.audit_config import write_world_audit_config
    from counterfactual_lab.flows.audit import dataset_audit

    started = time.perf_counter()
    run_uri = dataset_audit(config_uri=str(write_world_audit_config(path, config)))
    metrics = pl.read_parquet(Path(run_uri) / "metrics.parquet")
    return metrics, assess_findings(metrics), time.perf_counter() - started


def world_truth(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Build the world models and measure what is true in the world (no audit, no Prefect)."""
    import torch

    torch.set_num_threads(1)  # tiny models; two flow threads share the two cores

    from counterfactual_lab.models.clip import ClipEmbedder
    from counterfactual_lab.validity.models import BIASED_LABEL, build_world_models
    from counterfactual_lab.validity.truth import artifact_effects, planted_effect

    models = build_world_models(work / "models")
    embedders = {name: ClipEmbedder.load(str(path), device="cpu") for name, path in models.items()}
    transition = {"source": "female", "target": "male"}
    planted = planted_effect(embedders["biased"], label=BIASED_LABEL, pairs=args.truth_pairs, **transition)
    fair_truth = planted_effect(embedders["fair"], label=BIASED_LABEL, pairs=min(args.truth_pairs, 500), **transition)
    if abs(fair_truth.value) > 1e-6:
        raise SystemExit(f"the fair world model is not invariant to the badge: mean change {fair_truth.value!r}")
    reverse = planted_effect(embedders["biased"], label=BIASED_LABEL, pairs=min(args.truth_pairs, 500),
                             source="male", target="female")
    print(f"planted effect: P({planted.label}) {planted.transition} = {planted.value:+.4f} "
          f"(se {planted.standard_error:.4f}, {planted.pairs} pairs; {reverse.transition} {reverse.value:+.4f}); "
          f"fair model: {fair_truth.value:+.1e}", flush=True)
    facts = {name: artifact_effects(embedder, label=BIASED_LABEL, sources=500) for name, embedder in embedders.items()}
    for name, fact in facts.items():
        print(f"{name} model: generated − original P({BIASED_LABEL}) {fact['generated_minus_original']:+.4f}; "
              f"another seed moves it by {fact['seed_change_abs']:.4f} on average; "
              f"accuracy on originals {fact['accuracy']:.3f}", flush=True)
    return {"models": models, "planted": planted, "reverse": reverse, "facts": facts}


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    # Before Prefect is imported: its home (cache records, results) lives in the work folder.
    os.environ["PREFECT_HOME"] = str(work / "prefect-home")
    os.environ.pop("PREFECT_API_URL", None)  # the harness starts its own server

    from counterfactual_lab.validity.audit_config import world_audit_config
    from counterfactual_lab.validity.scoring import false_positive_rate_by_stratum, rates, score_run
    from counterfactual_lab.validity.world import write_world

    started = time.perf_counter()
    load_before = os.getloadavg()
    truth = world_truth(args, work)
    models, planted = truth["models"], truth["planted"]
    setup_s = time.perf_counter() - started

    import counterfactual_lab.flows  # noqa: F401  (the project's offline Prefect defaults, before Prefect loads)
    from prefect.testing.utilities import prefect_test_harness

    out = str(work / "out")
    verdicts: dict[str, list] = {"fair": [], "biased": [], "real_vs_generated": []}
    seconds: dict[str, float] = Counter()
    with prefect_test_harness(server_startup_timeout=120):
        for seed in range(args.runs):
            dataset = write_world(work / "worlds" / f"world-{seed}", rows=args.rows, seed=seed)
            common = dict(name=f"validity-world-{seed}", bootstrap_samples=args.bootstrap_samples)
            plans = {
                "fair": world_audit_config(dataset, models["fair"], models["fair"], out, reconstruction=True, **common),
                "biased": world_audit_config(dataset, models["biased"], models["fair"], out, reconstruction=True, **common),
                "real_vs_generated": world_audit_config(dataset, models["fair"], models["fair"], out,
                                                        reconstruction=False, **common),
            }
            line = [f"world {seed:>3}:"]
            for kind, config in plans.items():
                metrics, findings, took = audit(config, work / "configs" / f"{kind}-{seed}.yaml")
                seconds[kind] += took
                verdict = score_run(
                    metrics, findings, planted=planted.value if kind == "biased" else None,
                    label=planted.label, transition=planted.transition,
                )
                verdicts[kind].append(verdict)
                if kind == "biased":
                    line.append(f"biased found={verdict.found} covered={verdict.covered} "
                                f"{_number(verdict.value)} [{_number(verdict.ci_low)}, {_number(verdict.ci_high)}] "
                                f"n={verdict.n}" + (f" ({verdict.note})" if verdict.note else ""))
                else:
                    line.append(f"{kind} called={len(verdict.called)}")
            print("  ".join(line), flush=True)

    figures = rates(verdicts["fair"], verdicts["biased"], verdicts["real_vs_generated"])
    for kind in ("fair", "real_vs_generated"):
        reasons = Counter(reason for v in verdicts[kind] for reason in v.called)
        if reasons:
            print(f"{kind}: findings called (runs: count):")
            for reason, count in reasons.most_common(10):
                print(f"  {count:>3}  {reason}")
    widths = [v.ci_high - v.ci_low for v in verdicts["biased"] if v.ci_low is not None and v.ci_high is not None]
    pairs = [v.n for v in verdicts["biased"] if v.n is not None]
    total_s = time.perf_counter() - started
    return {
        "bench": "validity",
        "runs": args.runs,
        **figures,
        "false_positive_rate_by_stratum": false_positive_rate_by_stratum(verdicts["fair"]),
        "rows": args.rows,
        "pairs_per_transition": round(sum(pairs) / len(pairs), 1) if pairs else None,
        "planted_effect": round(planted.value, 5),
        "planted_effect_se": round(planted.standard_error, 5),
        "mean_interval_width": round(sum(widths) / len(widths), 5) if widths else None,
        "bootstrap_samples": args.bootstrap_samples,
        "seconds": round(total_s, 1),
        "setup_seconds": round(setup_s, 1),
        "audit_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "load_average": {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in os.getloadavg()]},
    }


def world_only(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    truth = world_truth(args, work)
    planted, reverse = truth["planted"], truth["reverse"]
    return {
        "bench": "validity-world",
        "planted_effect": round(planted.value, 5),
        "planted_effect_se": round(planted.standard_error, 5),
        "planted_effect_reverse": round(reverse.value, 5),
        **{f"{name}_{key}": round(value, 4) for name, fact in truth["facts"].items() for key, value in fact.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    args = parse_args()
    # Read when those libraries are imported: 60 audits' progress bars and INFO logs are noise here.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    missing = [] if args.world_only else missing_prerequisites()
    if missing:
        print(
            "bench/validity.py: error: this code base lacks " + "; and ".join(missing)
            + ". The bench reads issue 8's generated-vs-generated audit; run it where those are merged.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cflab-bench-validity-"))
    try:
        result = world_only(args, work) if args.world_only else run(args, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
