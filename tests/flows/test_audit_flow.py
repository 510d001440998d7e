"""The audit flow end to end: the sample dataset, the tiny models, a real temporary Prefect server.

One small audit (8 rows, gender only, 2 seeds, 2 steps, 32 px: 40 work items with the
reconstructions and controls) runs cold once per module;
the other tests rerun it warm, break it on purpose, or change one thing about it. The helpers
at the top (:func:`audit_home`, :func:`write_config`, :func:`count_calls`, :func:`comparable`)
are shared with the crash-resume, Ray and CLI tests.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from counterfactual_lab.demo.inputs import DemoInputs
from counterfactual_lab.runs.publisher import CONTRASTIVE_TABLE_NAMES, MANIFEST_NAME, REPORT_NAME, TABLE_NAMES
from counterfactual_lab.runs.reader import RunTables
from audit_runs import ROWS, assert_accounting_closes, assert_same_tables, audit_home, comparable, generate_batch_calls, pipeline_calls, run_audit, write_config

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


# ---- helpers shared with test_crash_resume, test_ray_audit and test_cli_audit ----


# ---- fixtures ----


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_models) -> DemoInputs:
    return audit_home(tmp_path_factory, tiny_models)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("audit-out"))


@pytest.fixture(scope="module")
def config(inputs, out, tmp_path_factory) -> str:
    return write_config(tmp_path_factory.mktemp("audit-config") / "audit.yaml", inputs, out)


@pytest.fixture(scope="module")
def first_run(prefect_server, config, out) -> tuple[RunTables, int]:
    """The cold audit: (its tables, how many times the diffusion pipeline ran)."""
    with pipeline_calls() as calls:
        run = run_audit(config, out)
    return run, len(calls)


# ---- the full audit ----


def test_full_audit_publishes_every_file_of_the_output_contract(first_run, out):
    run, calls = first_run
    run_dir = Path(run.run_uri)
    assert run_dir.parent == Path(out)
    for name in TABLE_NAMES:
        assert (run_dir / f"{name}.parquet").is_file(), name
    assert (run_dir / MANIFEST_NAME).is_file()
    assert (run_dir / REPORT_NAME).is_file()
    assert run.manifest["report"] == str(run_dir / REPORT_NAME)
    assert "tiny" in (run_dir / REPORT_NAME).read_text().split("</title>")[0]
    assert run.manifest["tiny_models"] is True

    acc = assert_accounting_closes(run)
    assert acc["rows_in"] == ROWS and acc["quarantined"] == 0
    # gender [female, male], every source's value known and listed: per row and seed a set of
    # its reconstruction and one counterfactual, 2 seeds, plus one control per row
    assert acc["planned"] == ROWS * 2 * 2 + ROWS == 40
    # The demo's judge lets everything pass (thresholds -1, no attribute check): keep_per_target 1
    # keeps one whole set per row and every control; the other set is not the best.
    assert (acc["kept"], acc["dropped"], acc["failed"]) == (ROWS * 2 + ROWS, ROWS * 2, 0)
    assert acc["dropped_by_reason"] == {"not_best_set": ROWS * 2}
    counts = run.manifest["generation_counts"]
    # one attribute: no image is shared between items
    assert counts == {"generated": acc["planned"], "cache_hits": 0, "failed": 0, "oom_halvings": 0,
                      "calls": acc["planned"], "calls_fixed": acc["planned"], "rounds": 1}
    assert calls == acc["planned"] // 4  # batches of 4 items, one pipeline call each

    for name in TABLE_NAMES:
        table = getattr(run, name)
        assert set(table["run_id"]) <= {run.run_id} and set(table["dataset"]) <= {"sample"}, name
    cf = run.counterfactuals
    assert cf["run_id"].to_list() == [run.run_id] * cf.height
    # every candidate is kept, dropped with a reason, or failed
    unexplained = cf.filter(~pl.col("kept") & pl.col("drop_reason").is_null() & (pl.col("status") != "failed"))
    assert unexplained.is_empty()
    assert cf.filter(pl.col("kept"))["drop_reason"].null_count() == acc["kept"]
    kept = cf.filter(pl.col("kept"))
    assert kept.group_by("source_id", "attribute", "target_value", "control").len()["len"].to_list() == [1] * ROWS * 3
    assert cf.group_by("variant", "control").len().sort("variant", "control").rows() == [
        ("counterfactual", False, ROWS * 2), ("reconstruction", False, ROWS * 2), ("reconstruction", True, ROWS)
    ]
    # a set per (source, attribute, seed): its reconstruction and its counterfactual
    sets = cf.filter(~pl.col("control")).group_by("set_id").agg(pl.col("variant").sort(), pl.col("seed").n_unique())
    assert sets.height == ROWS * 2 and set(map(tuple, sets["variant"].to_list())) == {("counterfactual", "reconstruction")}
    assert set(cf.filter(pl.col("control"))["seed"]) == {2}  # seed + seeds_per_target
    recon = cf.filter(pl.col("variant") == "reconstruction")
    assert (recon["target_value"] == recon["source_value"]).all() and (recon["counterfactual_caption"] == recon["caption"]).all()
    for uri in cf["image_uri"]:
        assert Path(uri).is_file() and Path(uri).parent == Path(out) / "images"

    predictions = run.predictions
    variants = predictions.group_by("variant", "control").len().sort("variant", "control").rows()
    assert variants == [("counterfactual", False, ROWS), ("original", False, ROWS), ("reconstruction", False, ROWS),
                        ("reconstruction", True, ROWS)]
    generated = predictions.filter(pl.col("variant") != "original")
    assert generated["set_id"].null_count() == 0 and generated["seed"].null_count() == 0
    assert set(generated["set_id"]) == set(kept["set_id"])
    assert {"flip_rate", "cits"} <= set(run.metrics["metric"])


def test_published_metrics_equal_an_independent_recomputation(first_run):
    """Exact values end to end: the overall pair metrics of metrics.parquet, recomputed from
    predictions.parquet in plain Python (tests/metric_frames.py), with their n and sources."""
    from metric_frames import recompute_pair_metrics

    run, _ = first_run
    labels = [c.removeprefix("score_") for c in run.predictions.columns if c.startswith("score_")]
    expected = recompute_pair_metrics(run.predictions, labels)
    assert expected, "the run has pairs to compare"
    for (stratum, attribute, metric, label), (value, n, sources) in expected.items():
        rows = run.metrics.filter(
            (pl.col("metric") == metric) & (pl.col("stratum") == stratum) & (pl.col("attribute") == attribute)
            & pl.col("group").is_null() & (pl.col("label").is_null() if label is None else pl.col("label") == label)
        )
        assert rows.height == 1, (stratum, attribute, metric, label)
        row = rows.row(0, named=True)
        assert (row["value"], row["n"], row["n_sources"]) == (pytest.approx(value, abs=1e-12), n, sources), row


def test_published_rankings_recompute_every_max_skew_and_ndkl_without_the_model(first_run):
    """retrieval.parquet holds every ranking the skew and NDKL rows were measured on: recomputed from
    it alone in plain Python (tests/metric_frames.py), they equal metrics.parquet."""
    from metric_frames import recompute_rankings

    run, _ = first_run
    assert (Path(run.run_uri) / "retrieval.parquet").is_file() and "retrieval" in run.manifest["tables"]
    assert {"query", "stratum", "id", "group", "score", "rank"} <= set(run.retrieval.columns)
    recomputed = recompute_rankings(run.retrieval)
    assert {key[0] for key in recomputed} == {"generated", "observational"}
    for (stratum, attribute, query, protocol), numbers in recomputed.items():
        rows = run.metrics.filter((pl.col("stratum") == stratum) & (pl.col("attribute") == attribute)
                                  & (pl.col("query") == query) & (pl.col("protocol") == protocol))
        top = rows.filter(pl.col("metric").str.starts_with("max_skew@")).row(0, named=True)
        assert (top["value"], top["k"]) == (pytest.approx(numbers["max"], abs=1e-12), numbers["k"])
        assert rows.filter(pl.col("metric") == "ndkl")["value"][0] == pytest.approx(numbers["ndkl"], abs=1e-12)


def test_content_keys_name_the_device_dtype_and_versions_the_images_were_made_with(first_run, config, out):
    """fp16 CUDA pixels differ from fp32 CPU pixels: the flow's content keys carry the precision
    this machine generates with, so images made under another one are never reused."""
    from counterfactual_lab.runs.location import locate_run
    from counterfactual_lab.config.audit_config import AuditConfig
    from counterfactual_lab.models.devices import generation_precision
    from counterfactual_lab.plan.work_items import plan_work_items
    from counterfactual_lab.storage.files import ImageStore
    from counterfactual_lab.ingest.validation import ingest_and_validate

    run, _ = first_run
    audit_config = AuditConfig.from_yaml(config)
    location = locate_run(audit_config, None, out)
    valid = ingest_and_validate(location.spec, image_store=ImageStore(out)).valid
    here = generation_precision(audit_config.generation.method, audit_config.runtime.device)
    assert (here["device"], here["dtype"]) == ("cpu", "float32") and here["versions"]["diffusers"]

    def keys(precision):
        items = plan_work_items(valid, audit_config, location.spec, generator_identity=location.models["generator"].key,
                                precision=precision)
        return {item.content_key for item in items}

    assert set(run.counterfactuals["content_key"]) == keys(here)
    on_a_gpu = {**here, "device": "cuda", "dtype": "float16"}
    upgraded = {**here, "versions": {**here["versions"], "diffusers": "99.0"}}
    assert keys(on_a_gpu).isdisjoint(keys(here)) and keys(upgraded).isdisjoint(keys(here))


def test_an_unchanged_complete_run_is_returned_without_running_any_stage(first_run, config, out):
    """Same config, same data, same library: the complete run already answers the audit."""
    from counterfactual_lab.flows.audit import dataset_audit

    first, _ = first_run
    manifest = Path(first.run_uri, MANIFEST_NAME)
    before = manifest.read_bytes()
    with pipeline_calls() as calls, generate_batch_calls() as batches:
        run_uri = dataset_audit(config_uri=config, output_uri=out)
    assert run_uri == first.run_uri
    assert calls == [] and batches == []
    assert manifest.read_bytes() == before  # not even republished


def test_second_run_generates_nothing_and_reproduces_every_table(first_run, config, out):
    first, _ = first_run
    with pipeline_calls() as calls, generate_batch_calls() as batches:
        second = run_audit(config, out, force=True)
    assert second.run_uri == first.run_uri
    assert calls == []  # no diffusion at all
    assert batches == []  # Prefect's task cache served every batch
    planned = second.manifest["row_accounting"]["planned"]
    assert second.manifest["generation_counts"]["generated"] == 0
    assert second.manifest["generation_counts"]["cache_hits"] == planned
    assert second.manifest["cache_hits"] == planned
    assert set(second.counterfactuals["status"]) == {"cached"}
    assert_same_tables(first, second)


def test_the_image_store_alone_prevents_regeneration_without_prefects_cache(first_run, config, out):
    """As with a fresh Prefect database and result storage: every task runs, the store has every image."""
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    first, _ = first_run
    with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
        with pipeline_calls() as calls, generate_batch_calls() as batches:
            run = run_audit(config, out, force=True)
    planned = run.manifest["row_accounting"]["planned"]
    assert len(batches) == planned // 4  # the generation tasks really ran ...
    assert calls == []  # ... and found every image in the content-addressed store
    assert run.manifest["generation_counts"] == {"generated": 0, "cache_hits": planned, "failed": 0, "oom_halvings": 0,
                                                 "calls": planned, "calls_fixed": planned, "rounds": 1}
    assert_same_tables(first, run)


def test_generate_only_writes_counterfactuals_and_manifest_but_no_predictions(first_run, config, out):
    first, _ = first_run
    with pipeline_calls() as calls:
        run = run_audit(config, out, evaluate=False)
    assert calls == []
    # A run of other stages: its own folder, so the full audit's predictions are not beside it.
    assert run.run_uri != first.run_uri
    run_dir = Path(run.run_uri)
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == sorted(
        ["counterfactuals.parquet", "drift.parquet", "quarantine.parquet", MANIFEST_NAME, REPORT_NAME, "validation.json",
         "expectations.json"]
    )
    assert set(run.manifest["tables"]) == {"counterfactuals", "quarantine", "drift"}
    assert run.predictions.is_empty() and run.metrics.is_empty()
    assert_accounting_closes(run)
    assert_frame_equal(comparable(run.counterfactuals.drop("run_id")), comparable(first.counterfactuals.drop("run_id")))


def test_an_image_missing_from_the_store_is_made_again_despite_prefects_cache(first_run, config, out):
    """Prefect's task cache outlives images someone deleted (a cleaned folder, an S3 lifecycle rule)."""
    first, _ = first_run
    victim = Path(first.counterfactuals["image_uri"][0])
    victim.unlink()
    with pipeline_calls() as calls:
        run = run_audit(config, out, force=True)
    planned = run.manifest["row_accounting"]["planned"]
    assert victim.is_file()
    assert len(calls) == 1
    assert run.manifest["generation_counts"] == {"generated": 1, "cache_hits": planned - 1, "failed": 0, "oom_halvings": 0,
                                                 "calls": planned, "calls_fixed": planned, "rounds": 1}
    assert_accounting_closes(run)


# ---- failures that must not stop the run, and limits that must ----


def test_a_poisoned_item_fails_alone_and_the_next_run_retries_it(prefect_server, inputs, config, tmp_path):
    """One source image vanished between ingest and generation: its item fails, its batch goes on;
    once the image is back, the next run makes that item, although Prefect cached the batch."""
    from prefect import flow

    from counterfactual_lab.runs.accounting import row_accounting
    from counterfactual_lab.generation.candidates import candidates_frame
    from counterfactual_lab.config.audit_config import AuditConfig
    from counterfactual_lab.plan.work_items import plan_work_items
    from counterfactual_lab.storage.files import ImageStore
    from counterfactual_lab.ingest.validation import ingest_and_validate
    from counterfactual_lab.flows.fan_out import generate_batches as _generate
    from counterfactual_lab.tasks.judge import judge_counterfactuals

    audit_config = AuditConfig.from_yaml(config)
    spec = audit_config.dataset_spec()
    store = ImageStore(str(tmp_path / "out"))
    outcome = ingest_and_validate(spec, image_store=store)
    # the seed-0 counterfactuals of rows 0, 1, 2: one batch (judged per target: no reconstruction)
    items = [i for i in plan_work_items(outcome.valid, audit_config, spec) if i.variant == "counterfactual" and i.seed == 0][:3]
    poisoned = Path(items[1].source_image_uri)
    source_bytes = poisoned.read_bytes()
    poisoned.unlink()

    @flow
    def generate_and_judge(items: list) -> pl.DataFrame:
        records = _generate(items, audit_config, store, "cpu")
        candidates = candidates_frame(items, records, audit_config.generation.method)
        judged, _ = judge_counterfactuals(
            candidates, audit_config.judge, store, keep_per_target=1,
            vocabulary={"gender": spec.vocabulary("gender")}, device="cpu",
        )
        return judged

    with pipeline_calls() as calls:
        judged = generate_and_judge(items)
    assert judged["status"].to_list() == ["generated", "failed", "generated"]
    assert str(poisoned) in judged["error"][1]
    assert judged["image_uri"][1] is None and judged["kept"][1] is False
    assert judged["drop_reason"][1] is not None
    assert all(Path(judged["image_uri"][i]).is_file() for i in (0, 2))
    assert len(calls) == 1  # the two good items still ran as one batch
    acc = row_accounting(3, 3, 0, judged)
    assert (acc["planned"], acc["failed"], acc["kept"] + acc["dropped"]) == (3, 1, 2)

    poisoned.write_bytes(source_bytes)
    with pipeline_calls() as calls:
        judged = generate_and_judge(items)
    assert judged["status"].to_list() == ["cached", "generated", "cached"]
    assert len(calls) == 1 and Path(judged["image_uri"][1]).is_file()


def test_evaluate_only_dataset_is_evaluated_without_generation(prefect_server, inputs, tmp_path):
    """A dataset that already holds counterfactual sets, in the SocialCounterfactuals layout:
    (type, value) column pairs, two subsets mixed in one file, read as they are through the spec."""
    source = pq.read_table(next(inputs.dataset_dir.glob("*.parquet"))).select(["id", "image", "caption", "label"])
    # Four sets of two images that differ in gender alone: sets 0-1 of the physical-gender
    # subset, sets 2-3 of the race-gender subset.
    n = source.num_rows
    subset = ["physical" if i < n // 2 else "race" for i in range(n)]
    fixed = {"physical": ["obese", "skinny"], "race": ["Asian", "Black"]}
    sets = source.append_column("counterfactual_set", pa.array([f"set-{i // 2}" for i in range(n)]))
    sets = sets.append_column("a1_type", pa.array(subset)).append_column(
        "a1", pa.array([fixed[kind][(i // 2) % 2] for i, kind in enumerate(subset)])
    )
    sets = sets.append_column("a2_type", pa.array(["gender"] * n)).append_column(
        "a2", pa.array(["female" if i % 2 else "male" for i in range(n)])
    )
    (tmp_path / "sets").mkdir()
    pq.write_table(sets, tmp_path / "sets" / "part-0.parquet")
    columns = {"counterfactual_set": "counterfactual_set", "attribute_pairs": [["a1_type", "a1"], ["a2_type", "a2"]]}
    config = write_config(
        tmp_path / "sets.yaml", inputs, str(tmp_path / "out"),
        dataset={"name": "sets", "uri": str(tmp_path / "sets"), "columns": columns},
        attributes={"gender": ["female", "male"], "race": ["Asian", "Black"]},
    )
    with pipeline_calls() as calls, generate_batch_calls() as batches:
        run = run_audit(config)
    assert calls == [] and batches == []
    assert run.counterfactuals.is_empty()
    acc = assert_accounting_closes(run)
    assert (acc["rows_in"], acc["planned"]) == (ROWS, 0)
    assert run.manifest["generation_counts"]["generated"] == 0
    predictions = run.predictions
    assert predictions.group_by("variant", "control").len().rows() == [("counterfactual", False, 2 * ROWS)]
    gender = predictions.filter(pl.col("attribute") == "gender")
    # each set is one comparison group of a male and a female image: 2 ordered pairs each
    groups = gender.group_by("set_id").agg(pl.col("group").sort(), pl.col("source_id").unique())
    assert groups.height == ROWS // 2
    assert groups["group"].to_list() == [["female", "male"]] * (ROWS // 2)
    assert sorted(groups["source_id"].explode().to_list()) == [f"set-{i}" for i in range(ROWS // 2)]
    race = predictions.filter(pl.col("attribute") == "race")
    # race never varies within a set: singletons, with no race in the physical-gender subset
    assert race.group_by("set_id").len()["len"].max() == 1
    assert race["group"].null_count() == ROWS // 2
    assert not run.metrics.is_empty()
    assert set(run.metrics["dataset"]) == {"sets"}


def test_reconstruction_off_is_the_older_design(prefect_server, inputs, tmp_path):
    """generation.reconstruction: false plans counterfactuals only, judged per target, paired with originals."""
    config = write_config(
        tmp_path / "old.yaml", inputs, str(tmp_path / "out"),
        generation={"reconstruction": False, "seeds_per_target": 1, "batch_size": 8},
    )
    run = run_audit(config)
    acc = assert_accounting_closes(run)
    assert (acc["planned"], acc["kept"], acc["dropped"]) == (ROWS, ROWS, 0)  # one target per row, one seed
    assert set(run.counterfactuals["variant"]) == {"counterfactual"} and not run.counterfactuals["control"].any()
    predictions = run.predictions
    assert predictions.group_by("variant").len().sort("variant").rows() == [("counterfactual", ROWS), ("original", ROWS)]
    assert predictions["set_id"].null_count() == 2 * ROWS  # counterfactuals pair with their original
    assert "compared with the <b>real original</b>" in Path(run.manifest["report"]).read_text()


def test_too_many_invalid_rows_stop_the_run_naming_the_quarantine_file(prefect_server, inputs, tmp_path):
    from counterfactual_lab.errors import DataOverLimit

    rows = pq.read_table(next(inputs.dataset_dir.glob("*.parquet"))).to_pylist()
    schema = pq.read_schema(next(inputs.dataset_dir.glob("*.parquet")))
    for row in rows[:2]:  # 2 of 8 rows = 25%, over the default 5%
        row["image"] = {"bytes": b"this is not an image", "path": row["image"]["path"]}
    (tmp_path / "bad").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "bad" / "part-0.parquet")
    config = write_config(
        tmp_path / "bad.yaml", inputs, str(tmp_path / "out"), dataset={"name": "bad", "uri": str(tmp_path / "bad")}
    )
    with generate_batch_calls() as batches, pytest.raises(DataOverLimit) as raised:
        run_audit(config)
    message = str(raised.value)
    assert "2 of 8 rows (25.0%) were quarantined" in message and "max_invalid_fraction" in message
    quarantine = Path(message.rsplit("see ", 1)[1])
    assert quarantine.name == "quarantine.parquet" and quarantine.is_file()
    assert pl.read_parquet(quarantine).height == 2
    assert not (quarantine.parent / MANIFEST_NAME).exists()
    assert batches == []


@pytest.mark.s3
def test_audit_publishes_to_s3(prefect_server, inputs, s3_bucket, tmp_path):
    from counterfactual_lab.storage.files import ImageStore

    out = f"s3://{s3_bucket}/audits"
    config = write_config(tmp_path / "s3.yaml", inputs, out, generation={"seeds_per_target": 1, "batch_size": 8})
    run = run_audit(config)
    assert run.run_uri.startswith(f"{out}/sample-")
    assert set(run.manifest["tables"]) == {*TABLE_NAMES, *CONTRASTIVE_TABLE_NAMES}
    assert all(uri.startswith(run.run_uri) for uri in run.manifest["tables"].values())
    assert run.manifest["report"] == f"{run.run_uri}/{REPORT_NAME}"
    acc = assert_accounting_closes(run)
    assert acc["planned"] == ROWS * 3  # per row: reconstruction + counterfactual (one seed) + control
    keys = run.counterfactuals["content_key"].to_list()
    assert ImageStore(out).existing(keys) == set(keys)
    assert all(uri.startswith(f"{out}/images/") for uri in run.counterfactuals["image_uri"])
