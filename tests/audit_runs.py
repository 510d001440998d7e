"""Running whole audits in tests: the demo's inputs on the session's tiny models, a config, the flow on
the session's Prefect server, and the checks every run must pass (accounting closes, tables equal)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal
from counterfactual_lab.demo.inputs import DemoInputs, demo_config, prepare_demo
from counterfactual_lab.runs.publisher import CONTRASTIVE_TABLE_NAMES, TABLE_NAMES
from counterfactual_lab.runs.reader import RunTables, read_run


ROWS = 8


# Columns that say when or how long, not what: never compared between runs.
TIMING_COLUMNS = ("seconds", "started_at", "finished_at", "duration_s")


# How a run got an image ("generated" by it, or "cached" from an earlier one) is about the run,
# not the image: runs compare equal when the same items have images.
RUN_RELATIVE_STATUS = {"cached": "generated"}


def audit_home(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> DemoInputs:
    """The demo's inputs with the small sample (``ROWS`` rows), built once per session.

    The models folder is the session's ``tiny_models`` (linked, so nothing is built twice);
    ``prepare_demo`` builds only what is missing, so every module that calls this shares one build.
    """
    home = tmp_path_factory.getbasetemp() / "audit-home"
    home.mkdir(exist_ok=True)
    models = home / "models"
    if not models.exists():
        models.symlink_to(Path(tiny_models["clip"]).parent, target_is_directory=True)
    return prepare_demo(home=home, out_uri=str(home / "out"), rows=ROWS)


def write_config(path: Path, inputs: DemoInputs, out_uri: str, **sections: dict[str, Any]) -> str:
    """Write the small audit config to ``path``; ``sections`` update the demo config's sections.

    Small: gender only, 2 seeds per target, 2 steps at 32 px, batches of 4, 50 bootstrap samples,
    a judge that keeps everything;
    every seed generated at once (``adaptive: false``: tests/test_rounds.py covers the rounds).
    ``attributes=`` and ``dataset=`` replace those sections instead of updating them.
    """
    config = demo_config(inputs.dataset_dir, inputs.models, out_uri)
    config["attributes"] = {"gender": ["female", "male"]}
    config["generation"].update(steps=2, seeds_per_target=2, keep_per_target=1, batch_size=4, resolution=32, adaptive=False)
    config["audit"]["bootstrap_samples"] = 50
    # The tests' judge lets every candidate through (the demo's drops a few, for people to review).
    config["judge"]["thresholds"] = {"text": -1.0, "direction": -1.0, "image": -1.0}
    for section, values in sections.items():
        if section in ("attributes", "dataset"):
            config[section] = values
        else:
            config[section].update(values)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


@contextlib.contextmanager
def count_calls(owner: Any, name: str):
    """Spy on ``owner.name`` (a function or method): the real call runs, each call is recorded."""
    calls: list[int] = []
    original = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(owner, name, spy)
        yield calls


def pipeline_calls():
    """Count calls of the img2img diffusion pipeline (the class the tiny img2img model loads as)."""
    import diffusers

    return count_calls(diffusers.StableDiffusionImg2ImgPipeline, "__call__")


def generate_batch_calls():
    """Count calls into the library's batch generator from the generation task."""
    from counterfactual_lab.tasks import generate

    return count_calls(generate, "generate_batch")


def run_audit(config: str, out: str | None = None, **kwargs: Any) -> RunTables:
    from counterfactual_lab.flows.audit import dataset_audit

    return read_run(dataset_audit(config_uri=config, output_uri=out, **kwargs))


def comparable(frame: pl.DataFrame, out_uri: str | None = None) -> pl.DataFrame:
    """``frame`` without timing columns, with ``status`` cached/generated alike, and its output root
    replaced by ``OUT`` (so runs into other folders compare)."""
    frame = frame.drop([c for c in TIMING_COLUMNS if c in frame.columns])
    if "status" in frame.columns:
        frame = frame.with_columns(pl.col("status").replace(RUN_RELATIVE_STATUS))
    if out_uri is not None:
        frame = frame.with_columns(
            pl.col(c).str.replace(out_uri.rstrip("/"), "OUT", literal=True)
            for c, dtype in frame.schema.items()
            if dtype == pl.String
        )
    return frame


def assert_same_tables(
    a: RunTables, b: RunTables, out_a: str | None = None, out_b: str | None = None, *, exact: bool = True
) -> None:
    """Every table equal; ``exact=False`` allows float rounding (rtol 1e-5) and nothing else:
    every key, label, decision and image must still match."""
    tolerance = {} if exact else {"rel_tol": 1e-5, "abs_tol": 1e-7}
    for name in (*TABLE_NAMES, *CONTRASTIVE_TABLE_NAMES):
        assert_frame_equal(
            comparable(getattr(a, name), out_a), comparable(getattr(b, name), out_b), check_exact=exact, **tolerance
        )


def assert_accounting_closes(run: RunTables) -> dict[str, Any]:
    acc = run.manifest["row_accounting"]
    assert run.manifest["row_accounting_problems"] == []
    assert acc["rows_in"] == acc["valid"] + acc["quarantined"]
    assert acc["planned"] == acc["kept"] + acc["dropped"] + acc["failed"]
    assert acc["planned"] == run.counterfactuals.height
    assert acc["quarantined"] == run.quarantine.height
    assert sum(acc["dropped_by_reason"].values()) == acc["dropped"]
    return acc
