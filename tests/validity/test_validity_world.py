"""The planted-bias world (counterfactual_lab/validity): editor, models, truth, scoring, and one audit.

The fast checks call the library directly; the last test runs a tiny world through the real
``dataset-audit`` flow on the session's temporary Prefect server. Its findings block runs
only where ``counterfactual_lab.metrics.findings.assess_findings`` and ``generation.reconstruction``
exist (issue 8's generated-vs-generated audit), and is skipped with that reason otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from counterfactual_lab.config.audit_config import AuditConfig, GenerationSection
from counterfactual_lab.errors import ConfigError, UserError
from counterfactual_lab.config.methods import METHODS
from counterfactual_lab.generation.editor import ImageEditor, make_editor
from counterfactual_lab.generation.batch import generate_batch
from counterfactual_lab.plan.work_items import WorkItem
from counterfactual_lab.generation.planted import PlantedWorldEditor, apply_artifact, binomial_blur
from counterfactual_lab.generation.planted import FEATURE_COLOURS, feature_box, paint_feature
from counterfactual_lab.validity.world import IMAGE_SIZE, world_row, write_world

FEMALE, MALE = FEATURE_COLOURS["gender"]["female"], FEATURE_COLOURS["gender"]["male"]
BOX = feature_box(IMAGE_SIZE, IMAGE_SIZE)


def item_for(row, target: str, seed: int = 0, key: str | None = None, attribute: str = "gender") -> WorkItem:
    # Issue 8 adds `variant` and `control` to WorkItem; fill them where this code base has them.
    names = {f.name for f in dataclasses.fields(WorkItem)}
    extra = {"variant": "reconstruction" if target == row.gender else "counterfactual", "control": False}
    return WorkItem(
        source_id=row.id, source_key=key or f"key-{row.id}", source_image_uri="unused", caption=row.caption,
        attribute=attribute, source_value=row.gender, target_value=target, seed=seed,
        counterfactual_caption=row.caption, explanation="", instruction="", generator="g",
        content_key=f"{row.id}-{target}-{seed}", **{k: v for k, v in extra.items() if k in names},
    )


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def changed_rows(a: np.ndarray, b: np.ndarray) -> set[int]:
    return set(np.nonzero(np.any(a != b, axis=(1, 2)))[0].tolist())


def checker_response(array: np.ndarray) -> float:
    """Mean of (−1)^(x+y)·luminance over the scene: the world's texture, which the blur removes."""
    scene = array[BOX.band_height :].astype(np.float64).mean(axis=2)
    y, x = np.indices(scene.shape)
    return float((scene * np.where((y + BOX.band_height + x) % 2 == 0, 1, -1)).mean())


@pytest.fixture(scope="module")
def editor() -> PlantedWorldEditor:
    return make_editor(GenerationSection(method="planted-world", model="planted-world", seeds_per_target=1, keep_per_target=1))


# ---- the world ----------------------------------------------------------------------------------


def test_world_rows_render_gender_as_the_badge_and_are_deterministic(tmp_path):
    rows = [world_row(3, i) for i in range(6)]
    assert [r.gender for r in rows] == ["female", "male"] * 3
    for row in rows:
        stripe = row.pixels[BOX.top : BOX.bottom, BOX.left : BOX.right]
        assert (stripe == (FEMALE if row.gender == "female" else MALE)).all()
        assert ("woman" in row.caption.split()) == (row.gender == "female")
        assert row.label in ("doctor", "nurse")
    assert (world_row(3, 4).pixels == rows[4].pixels).all() and world_row(4, 4).id != rows[4].id

    first, second = write_world(tmp_path / "a", rows=6, seed=3), write_world(tmp_path / "b", rows=6, seed=3)
    assert (first / "part-00000.parquet").read_bytes() == (second / "part-00000.parquet").read_bytes()


def test_the_normal_ingest_reads_a_world(tmp_path):
    from counterfactual_lab.config.dataset_spec import DatasetSpec
    from counterfactual_lab.storage.files import ImageStore
    from counterfactual_lab.ingest.validation import ingest_and_validate

    outcome = ingest_and_validate(
        DatasetSpec(uri=str(write_world(tmp_path / "world", rows=8, seed=1))), image_store=ImageStore(str(tmp_path / "out"))
    )
    assert outcome.rows_in == 8 and outcome.quarantined == 0
    assert sorted(outcome.valid["gender"].to_list()) == ["female"] * 4 + ["male"] * 4
    assert set(outcome.valid["label"].to_list()) <= {"doctor", "nurse"}


# ---- the editor ---------------------------------------------------------------------------------


def test_the_editor_is_registered_and_the_config_needs_no_model_folder(editor):
    assert METHODS["planted-world"].editor_class() is PlantedWorldEditor
    assert isinstance(editor, ImageEditor) and editor.method == "planted-world"
    config = AuditConfig.parse_config(
        {"dataset": {"uri": "x"}, "generation": {"method": "planted-world", "model": "no/such/folder"}}
    )
    assert config.generation.method == "planted-world"


def test_an_edit_changes_the_badge_and_nothing_else_but_the_artifact(editor):
    row = world_row(0, 0)  # female
    source = Image.fromarray(row.pixels)
    counterfactual, reconstruction = editor.edit([item_for(row, "male"), item_for(row, "female")], [source, source])
    cf, rec = pixels(counterfactual), pixels(reconstruction)
    # Same source and seed: the same artifact, so the two differ only where the blurred stripe is.
    assert changed_rows(cf, rec) <= set(range(BOX.top - 1, BOX.bottom + 1))
    assert changed_rows(cf, rec) and (cf[BOX.band_height :] == rec[BOX.band_height :]).all()
    inner = (slice(BOX.top + 1, BOX.bottom - 1), slice(BOX.left + 1, BOX.right - 1))
    assert np.abs(cf[inner].mean(axis=(0, 1)) - MALE).max() < 8
    assert np.abs(rec[inner].mean(axis=(0, 1)) - FEMALE).max() < 8
    # Exactly the world's edit followed by the artifact; without the artifact, only the stripe changes.
    expected = apply_artifact(paint_feature(row.pixels, "gender", "male"), "key-" + row.id, 0)
    assert (cf == expected).all()
    bare = PlantedWorldEditor(GenerationSection(method="planted-world", params={"blur": False, "cast_std": 0, "noise_std": 0}))
    plain = pixels(bare.edit([item_for(row, "male")], [source])[0])
    diff = np.argwhere(np.any(plain != row.pixels, axis=2))
    assert diff[:, 0].min() == BOX.top and diff[:, 0].max() == BOX.bottom - 1
    assert diff[:, 1].min() == BOX.left and diff[:, 1].max() == BOX.right - 1


def test_the_arm_params_draw_the_artifact_per_target_and_shift_colour_with_it():
    row = world_row(0, 0)  # female
    source = Image.fromarray(row.pixels)

    def edits(params):
        editor = PlantedWorldEditor(GenerationSection(method="planted-world", params=params))
        cf, rec = editor.edit([item_for(row, "male"), item_for(row, "female")], [source, source])
        return pixels(cf), pixels(rec)

    # artifact_per_target: reconstruction and counterfactual differ beyond the stripe (the scene too).
    cf, rec = edits({"artifact_per_target": True})
    assert (cf[BOX.band_height:] != rec[BOX.band_height:]).any()
    # confound_green/blue: the male-target scene is shifted exactly, the band untouched.
    plain_cf, plain_rec = edits({})
    cf, rec = edits({"confound_green": -4, "confound_blue": 4})
    shift = cf[BOX.band_height:] - plain_cf[BOX.band_height:]
    assert (shift[..., 0] == 0).all() and (shift[..., 1] == -4).all() and (shift[..., 2] == 4).all()
    assert (cf[:BOX.band_height] == plain_cf[:BOX.band_height]).all() and (rec == plain_rec).all()
    assert (cf[BOX.band_height:, :, 2].astype(int) - rec[BOX.band_height:, :, 2]).mean() == 4
    # The band is the region the method declares it edits: the judge reads drift outside it.
    region = METHODS["planted-world"].edit_region_mask(IMAGE_SIZE, IMAGE_SIZE)
    assert region.shape == (IMAGE_SIZE, IMAGE_SIZE) and region[: BOX.band_height].all() and not region[BOX.band_height:].any()


def test_a_reconstruction_keeps_the_value_and_still_gets_the_artifact(editor):
    row = world_row(0, 1)  # male
    rec = pixels(editor.edit([item_for(row, "male")], [Image.fromarray(row.pixels)])[0])
    inner = (slice(BOX.top + 1, BOX.bottom - 1), slice(BOX.left + 1, BOX.right - 1))
    assert np.abs(rec[inner].mean(axis=(0, 1)) - MALE).max() < 8
    assert not (rec == row.pixels).all()
    # The blur removes the checkerboard texture (a sharp real image has it at its full contrast).
    assert checker_response(row.pixels) > 0.5 * row.texture
    assert abs(checker_response(rec)) < 0.1 * row.texture
    assert np.abs(binomial_blur(row.pixels) - rec).mean() < 6  # blur + small cast and noise, nothing else


def test_the_artifact_is_deterministic_per_source_and_seed(editor):
    rows = [world_row(2, i) for i in range(3)]
    sources = [Image.fromarray(r.pixels) for r in rows]
    alone = editor.edit([item_for(rows[1], "female", seed=4)], [sources[1]])[0]
    in_batch = editor.edit([item_for(r, "female", seed=4) for r in rows], sources)[1]
    assert alone.tobytes() == in_batch.tobytes()
    other_seed = pixels(editor.edit([item_for(rows[1], "female", seed=5)], [sources[1]])[0])
    assert (pixels(alone) != other_seed).mean() > 0.5  # another seed, another cast and noise
    other_source_key = pixels(editor.edit([item_for(rows[1], "female", seed=4, key="other")], [sources[1]])[0])
    assert (pixels(alone) != other_source_key).mean() > 0.5


def test_the_editor_rejects_what_it_cannot_render():
    row = world_row(0, 0)
    source = Image.fromarray(row.pixels)
    editor = PlantedWorldEditor(GenerationSection(method="planted-world"))
    with pytest.raises(UserError, match="renders only \\['gender'\\].*not 'age'"):
        editor.edit([item_for(row, "young", attribute="age")], [source])
    with pytest.raises(UserError, match="no rendering for gender value 'non-binary'"):
        editor.edit([item_for(row, "non-binary")], [source])
    # One check for every method's params (method_params.check_method_params): the preflight
    # and the editor refuse the same values with the same line.
    from counterfactual_lab.config.methods import check_method_params

    refused = {
        "strength": (0.5, "generation.params.strength is not understood by method 'planted-world'"),
        "noise_std": (-1, "generation.params.noise_std must be in [0, 255], got -1"),
        "cast_std": (1e6, "generation.params.cast_std must be in [0, 255], got 1000000.0"),
        "blur": ("yes", "generation.params.blur must be true or false, got 'yes'"),
    }
    for name, (value, message) in refused.items():
        generation = GenerationSection(method="planted-world", params={name: value})
        for check in (check_method_params, PlantedWorldEditor):
            with pytest.raises(UserError) as info:
                check(generation)
            assert str(info.value).startswith(message), (check, str(info.value))
    with pytest.raises(ConfigError, match="method"):
        AuditConfig.parse_config({"dataset": {"uri": "x"}, "generation": {"method": "validate"}})


def test_generate_batch_stores_and_then_reuses_validation_edits(tmp_path):
    from counterfactual_lab.plan.work_items import plan_work_items
    from counterfactual_lab.config.dataset_spec import DatasetSpec
    from counterfactual_lab.storage.files import ImageStore
    from counterfactual_lab.ingest.validation import ingest_and_validate

    store = ImageStore(str(tmp_path / "out"))
    spec = DatasetSpec(uri=str(write_world(tmp_path / "world", rows=4, seed=7)))
    valid = ingest_and_validate(spec, image_store=store).valid
    config = AuditConfig.parse_config(
        {"dataset": {"uri": spec.uri}, "generation": {"method": "planted-world", "model": "planted-world",
                                                      "seeds_per_target": 1, "keep_per_target": 1}}
    )
    items = plan_work_items(valid, config, spec)  # (reconstructions too, where the plan makes them)
    records = generate_batch(items, config.generation, store)
    assert [r.status for r in records] == ["generated"] * len(items) and items
    for item, record in zip(items, records):
        source = np.asarray(store.get(item.source_key))
        expected = apply_artifact(paint_feature(source, item.attribute, item.target_value), item.source_key, item.seed)
        assert (np.asarray(Image.open(record.image_uri).convert("RGB")) == expected).all()
    assert {r.status for r in generate_batch(items, config.generation, store)} == {"cached"}


# ---- the models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_models(tmp_path_factory):
    from counterfactual_lab.validity.models import build_world_models

    return build_world_models(tmp_path_factory.mktemp("world-models"))


@pytest.fixture(scope="module")
def embedders(world_models):
    from counterfactual_lab.models.clip import ClipEmbedder

    return {name: ClipEmbedder.load(str(path), device="cpu") for name, path in world_models.items()}


def label_probabilities(embedder, images) -> np.ndarray:
    """(n, 2) zero-shot probabilities as the audit computes them (ClipEmbedder)."""
    from counterfactual_lab.validity.models import DEFAULT_PROMPT
    from counterfactual_lab.validity.world import LABELS

    texts = embedder.embed_texts([DEFAULT_PROMPT.format(label=label) for label in LABELS])
    return embedder.zero_shot(embedder.embed_images(list(images)), texts)


def doctor_probability(embedder, images) -> np.ndarray:
    return label_probabilities(embedder, images)[:, 0]


def edited(pixels_: np.ndarray, key: str, value: str, seed: int) -> Image.Image:
    """What the editor outputs for this source, target value and seed."""
    return Image.fromarray(apply_artifact(paint_feature(pixels_, "gender", value), key, seed), "RGB")


@pytest.fixture(scope="module")
def pair_images():
    """For 24 world rows: originals, reconstructions and counterfactuals at seed 0, reconstructions at seed 1."""
    rows = [world_row(11, i) for i in range(24)]
    other = {"female": "male", "male": "female"}
    return {
        "rows": rows,
        "original": [Image.fromarray(r.pixels) for r in rows],
        "reconstruction": [edited(r.pixels, r.id, r.gender, 0) for r in rows],
        "counterfactual": [edited(r.pixels, r.id, other[r.gender], 0) for r in rows],
        "other_seed": [edited(r.pixels, r.id, r.gender, 1) for r in rows],
    }


def test_the_models_load_through_the_audit_code_path(world_models, embedders, pair_images, tmp_path):
    import torch
    from transformers import CLIPModel

    from counterfactual_lab.validity.models import FAIR, make_world_model

    for name, path in world_models.items():
        assert list(path.glob("*.safetensors")) and not list(path.glob("*.bin"))
        assert isinstance(embedders[name].model, CLIPModel)
        assert json.loads((path / "world_model.json").read_text())["name"] == name
    # Saved and loaded back (ClipEmbedder.load: AutoModel + AutoProcessor): the same function
    # as the model built in memory.
    model, processor = make_world_model(FAIR, tmp_path)
    inputs = processor(images=pair_images["original"][:4], return_tensors="pt")
    with torch.no_grad():
        output = model.get_image_features(pixel_values=inputs["pixel_values"])
    in_memory = output if isinstance(output, torch.Tensor) else output.pooler_output
    in_memory = torch.nn.functional.normalize(in_memory, dim=-1).numpy()
    assert np.allclose(embedders["fair"].embed_images(pair_images["original"][:4]), in_memory, atol=1e-6)


def test_the_models_compute_the_documented_logit(embedders, pair_images):
    """logit(doctor) − logit(nurse) = 12·tint + 12·sharpness + badge_logit·badge (models.py), fitted
    by least squares on originals and generated images: the set weights do what they say."""
    from counterfactual_lab.validity.models import BIASED, FAIR, WEAK, readings

    images = pair_images["original"] + pair_images["counterfactual"]
    design = np.array([[*readings(np.asarray(im)), 1.0] for im in images])
    for spec in (FAIR, BIASED, WEAK):
        probabilities = label_probabilities(embedders[spec.name], images)
        logit = np.log(probabilities[:, 0] / probabilities[:, 1])
        coefficients, *_ = np.linalg.lstsq(design, logit, rcond=None)
        expected = [spec.tint_logit, spec.sharpness_logit, spec.badge_logit, spec.bias_logit]
        assert np.allclose(coefficients, expected, atol=0.02), (spec.name, coefficients)
        assert np.abs(design @ coefficients - logit).max() < 0.01


def test_the_fair_model_ignores_the_badge_and_the_biased_one_moves_with_it(embedders, pair_images):
    female = np.array([r.gender == "female" for r in pair_images["rows"]])
    for name in ("fair", "biased"):
        reconstruction = doctor_probability(embedders[name], pair_images["reconstruction"])
        counterfactual = doctor_probability(embedders[name], pair_images["counterfactual"])
        delta = counterfactual - reconstruction
        if name == "fair":
            assert np.abs(delta).max() <= 1e-6
            assert 0.2 < reconstruction.mean() < 0.8 and reconstruction.std() > 0.1  # it does read the scene
        else:
            # A male badge raises P(doctor) (the design: +0.6 logit); female→male up, male→female down.
            assert (delta[female] > 0.02).all() and (delta[~female] < -0.02).all()
            assert 0.05 < delta[female].mean() < 0.16


def test_both_models_react_to_the_generation_artifact(embedders, pair_images):
    for name, embedder in embedders.items():
        original = doctor_probability(embedder, pair_images["original"])
        reconstruction = doctor_probability(embedder, pair_images["reconstruction"])
        other_seed = doctor_probability(embedder, pair_images["other_seed"])
        # Generated images lost the sharp texture: P(doctor) drops on (nearly) every one.
        assert (reconstruction - original).mean() < -0.03 and ((reconstruction - original) < 0).mean() > 0.8
        # Another seed, another artifact: the answers move a little when nothing protected changes.
        assert (np.abs(other_seed - reconstruction) > 1e-3).mean() > 0.5


def test_the_truth_is_computed_without_the_audits_code_path(world_models):
    """truth.py imports no editor function, no embedder and no evaluation code (only the world's
    constants), and its two truths (a direct forward pass, the world formula) agree."""
    import ast

    from counterfactual_lab.validity import truth
    from counterfactual_lab.validity.truth import DirectClip, planted_effect

    tree = ast.parse(Path(truth.__file__).read_text())
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.setdefault(node.module, set()).update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update({alias.name: set() for alias in node.names})
    assert imported["counterfactual_lab.generation.planted"] <= {"ATTRIBUTE", "FEATURE_COLOURS", "feature_box"}
    assert not [m for m in imported if m and m.startswith(("counterfactual_lab.models", "counterfactual_lab.evaluate",
                                                           "counterfactual_lab.metrics", "counterfactual_lab.judge"))]
    fair, biased = DirectClip(world_models["fair"]), DirectClip(world_models["biased"])
    assert planted_effect(fair, pairs=100).value == pytest.approx(0.0, abs=1e-6)
    effect = planted_effect(biased, pairs=400)
    assert abs(effect.value - effect.formula_value) < 0.003 and effect.transition == "female→male"
    assert effect.value > 10 * effect.standard_error > 0 and effect.world_seed not in range(100_000)
    reverse = planted_effect(biased, source="male", target="female", pairs=100)
    assert reverse.value < 0
    # The audit's own probabilities on the editor's images agree with the direct pass on the same images.
    from counterfactual_lab.models.clip import ClipEmbedder

    images = [np.asarray(edited(world_row(5, i).pixels, "k", "male", 0)) for i in range(8)]
    direct = biased.probabilities(images)[:, 0]
    audit = doctor_probability(ClipEmbedder.load(str(world_models["biased"]), device="cpu"), [Image.fromarray(i) for i in images])
    assert np.allclose(direct, audit, atol=1e-5)


# ---- scoring (hand-built frames of issue 8's shapes) ---------------------------------------------

KEYS = dict(metric="prob_gap_signed", stratum="generated", attribute="gender", label="doctor")


def metrics_frame(value=0.11, low=0.09, high=0.13, group="female→male") -> pl.DataFrame:
    return pl.DataFrame([
        {**KEYS, "group": group, "query": None, "value": value, "ci_low": low, "ci_high": high, "n": 24,
         "n_sources": 24, "skipped_resamples": 0, "note": None},
        {**KEYS, "stratum": "observational", "group": group, "query": None, "value": 0.3, "ci_low": 0.2,
         "ci_high": 0.4, "n": 24, "n_sources": 24, "skipped_resamples": 0, "note": None},
    ])


def findings_frame(metrics: pl.DataFrame, called: list[bool]) -> pl.DataFrame:
    return metrics.with_columns(pl.Series("called", called), pl.lit("a sentence").alias("sentence"))


def test_score_run_reads_the_planted_row_by_stratum_label_and_transition():
    from counterfactual_lab.validity.scoring import score_run

    metrics = metrics_frame()
    found = score_run(metrics, findings_frame(metrics, [True, False]), planted=0.12)
    assert found.found and found.covered and found.any_called and (found.value, found.n) == (0.11, 24)
    # The observational row is called, not the generated one: the planted finding is not found.
    assert score_run(metrics, findings_frame(metrics, [False, True]), planted=0.12).found is False
    outside = score_run(metrics, findings_frame(metrics, [True, False]), planted=0.135)
    assert outside.found and outside.covered is False
    wrong_way = metrics_frame(group="male→female")
    missing = score_run(wrong_way, findings_frame(wrong_way, [True, True]), planted=0.12)
    assert missing.found is False and missing.covered is False and "0 metric rows" in missing.note
    fair = score_run(metrics, findings_frame(metrics, [False, False]))
    assert fair.any_called is False and fair.found is None and fair.called_strata == []
    assert score_run(metrics, findings_frame(metrics, [False, True])).called_strata == ["observational"]
    with pytest.raises(ValueError, match="lacks columns \\['called'\\]"):
        score_run(metrics, metrics, planted=0.1)


def test_power_counts_a_call_with_the_truths_sign_only():
    from counterfactual_lab.validity.scoring import score_run

    metrics = metrics_frame(value=-0.10, low=-0.12, high=-0.08)
    wrong = score_run(metrics, findings_frame(metrics, [True, False]), planted=0.12)
    assert wrong.found is False and wrong.any_called
    assert score_run(metrics, findings_frame(metrics, [True, False]), planted=-0.11).found is True


def test_arm_figures_are_shares_of_runs_with_exactly_the_keys_of_each_arm():
    from counterfactual_lab.validity.scoring import ARM_FIGURES, RunVerdict, arm_figures, missed_targets

    runs = [RunVerdict(any_called=c, run_verdict=v, confounded=k, comparisons=m, found=f, covered=cov)
            for c, v, k, m, f, cov in ((False, "no finding", 0, 105, None, None), (True, "finding", 0, 110, True, True),
                                       (False, "confounded", 3, 110, False, True), (True, "finding", 1, 120, True, False))]
    assert arm_figures("null", runs) == {"runs": 4, "false_positive_rate": 0.5}
    assert arm_figures("default", runs) == {"runs": 4, "power": 0.5, "coverage": 0.5, "confounded_rate": 0.5}
    assert arm_figures("confound", runs) == {"runs": 4, "finding_rate": 0.5, "confounded_rate": 0.25}
    assert arm_figures("weak", runs, planted_effect=0.032512) == {"runs": 4, "power": 0.5, "planted_effect": 0.03251,
                                                                   "comparisons": 105}
    assert arm_figures("clusters", runs, width_ratios=[1.5, 2.0]) == {"runs": 4, "coverage": 0.5, "cluster_to_row_width": 1.75}
    assert set(ARM_FIGURES) == {"null", "default", "weak", "noisy", "confound", "clusters", "few", "text_side"}
    runs[0].text_called, runs[0].image_called = True, False
    runs[1].text_called, runs[1].image_called = True, True
    assert arm_figures("text_side", runs[:2]) == {"runs": 2, "text_called_rate": 1.0, "image_called_rate": 0.5}
    assert missed_targets("text_side", {"text_called_rate": 0.85, "image_called_rate": 0.1}) == [
        "text_side.text_called_rate = 0.85 (target >= 0.9)"]
    assert missed_targets("default", arm_figures("default", runs)) == [
        "default.power = 0.5 (target >= 0.95)", "default.coverage = 0.5 (target >= 0.93)",
        "default.confounded_rate = 0.5 (target <= 0.1)"]
    assert missed_targets("weak", {"power": 0.9, "comparisons": 99}) == ["weak.comparisons = 99 (target >= 100)"]


def test_score_modalities_reads_the_planted_row_in_the_text_and_any_call_in_the_image():
    from counterfactual_lab.validity.scoring import RunVerdict, score_modalities

    def findings(text_value: float, text_called: bool, image_called: bool) -> pl.DataFrame:
        base = {"metric": "prob_gap_signed", "stratum": "generated", "attribute": "gender", "group": "female→male",
                "label": "doctor"}
        return pl.DataFrame([{**base, "modality": "text", "value": text_value, "called": text_called},
                             {**base, "modality": "image", "value": 0.001, "called": False},
                             {**base, "metric": "flip_rate", "label": None, "modality": "image", "value": 0.2,
                              "called": image_called}])

    scored = score_modalities(RunVerdict(any_called=True), findings(0.1, True, False))
    assert (scored.text_called, scored.image_called) == (True, False)
    assert score_modalities(RunVerdict(any_called=True), findings(-0.1, True, False)).text_called is False  # wrong sign
    assert score_modalities(RunVerdict(any_called=True), findings(0.1, False, True)).to_dict()["image_called"] is True


def test_the_text_side_model_reads_the_person_word_and_not_the_badge(embedders, pair_images):
    from counterfactual_lab.validity.models import PERSON_PROMPT, TEXT_SIDE_NAME
    from counterfactual_lab.validity.world import LABELS

    embedder = embedders[TEXT_SIDE_NAME]

    def doctor(images, word):
        texts = embedder.embed_texts([PERSON_PROMPT.format(person=word, label=label) for label in LABELS])
        return embedder.zero_shot(embedder.embed_images(list(images)), texts)[:, 0]

    reconstructions = pair_images["reconstruction"]
    text = doctor(reconstructions, "man") - doctor(reconstructions, "woman")
    assert 0.05 < text.mean() < 0.2 and (text > 0).all()  # "man" raises P(doctor) on every image
    image = doctor(pair_images["counterfactual"], "woman") - doctor(reconstructions, "woman")
    assert np.abs(image).max() < 1e-6  # the badge changed, the answer did not


# ---- one tiny world through the real audit flow -------------------------------------------------


def _audit(tmp_path: Path, name: str, config: dict) -> Path:
    from counterfactual_lab.flows.audit import dataset_audit

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return Path(dataset_audit(config_uri=str(path)))


@pytest.mark.slow
@pytest.mark.prefect
def test_a_world_runs_through_the_audit_flow(prefect_server, world_models, tmp_path):
    from counterfactual_lab.validity.audit_config import world_audit_config

    dataset = write_world(tmp_path / "world", rows=8, seed=0)
    out = str(tmp_path / "out")
    config = world_audit_config(dataset, world_models["fair"], world_models["fair"], out, name="world-test",
                                reconstruction=False, bootstrap_samples=50)
    run = _audit(tmp_path, "fair-real-vs-generated", config)

    manifest = json.loads((run / "manifest.json").read_text())
    accounting = manifest["row_accounting"]
    assert accounting["rows_in"] == 8 == accounting["valid"] + accounting["quarantined"]
    assert accounting["planned"] == accounting["kept"] + accounting["dropped"] + accounting["failed"]
    assert accounting["failed"] == 0 and accounting["kept"] == accounting["planned"] >= 8
    counterfactuals = pl.read_parquet(run / "counterfactuals.parquet")
    assert set(counterfactuals["method"]) == {"planted-world"}
    for row in counterfactuals.iter_rows(named=True):
        stored = np.asarray(Image.open(row["image_uri"]).convert("RGB"))
        source = np.asarray(Image.open(row["source_image_uri"]).convert("RGB"))
        expected = apply_artifact(paint_feature(source, "gender", row["target_value"]), row["source_key"], row["seed"])
        assert (stored == expected).all(), "the generate task stored what the validation editor makes"
    predictions = pl.read_parquet(run / "predictions.parquet")
    assert {"original", "counterfactual"} <= set(predictions["variant"])
    # Originals vs generated images (the old design): the fair model's P(doctor) drops on the
    # generated ones (the artifact), a difference that has nothing to do with gender.
    metrics = pl.read_parquet(run / "metrics.parquet").filter(pl.col("stratum") == "real_vs_generated")
    gap = metrics.filter((pl.col("metric") == "prob_gap_signed") & (pl.col("label") == "doctor")
                         & pl.col("group").is_not_null())
    assert gap.height == 2 and (gap["ci_high"] < 0).all()

    # ---- generated vs generated (the default design) finds the planted bias only ----
    from counterfactual_lab.report.findings import assess_findings
    from counterfactual_lab.validity.scoring import score_run
    from counterfactual_lab.validity.truth import DirectClip, planted_effect

    dataset = write_world(tmp_path / "world-24", rows=24, seed=0)
    planted = planted_effect(DirectClip(world_models["biased"]), pairs=400)
    verdicts, runs = {}, {}
    for name in ("fair", "biased"):
        config = world_audit_config(dataset, world_models[name], world_models["fair"], out, name="world-test-24",
                                    reconstruction=True, bootstrap_samples=200)
        runs[name] = _audit(tmp_path, name, config)
        metrics = pl.read_parquet(runs[name] / "metrics.parquet")
        verdicts[name] = score_run(metrics, assess_findings(metrics), planted=planted.value if name == "biased" else None)
    assert verdicts["fair"].any_called is False, verdicts["fair"].called
    # Found, and near the truth. Whether the interval covers the planted effect is a rate over
    # many worlds (bench/validity.py: coverage); one 24-row world may miss by a hair.
    assert verdicts["biased"].found, verdicts["biased"]
    biased = verdicts["biased"]
    assert abs(biased.value - planted.value) < 0.03 and biased.ci_low < biased.value < biased.ci_high, (biased, planted)

    # ---- cflab compare explains the two: the planted bias appears, beyond what another seed does ----
    from counterfactual_lab.report.compare import APPEARED, compare_runs

    comparison = compare_runs(str(runs["fair"]), str(runs["biased"]))
    appeared = [c for c in comparison.changes if c.change == APPEARED]
    assert appeared and {c.key["attribute"] for c in appeared} == {"gender"}, comparison.text()
    assert all(c.difference.beyond and c.difference.rule == "paired" for c in appeared if "gap" in c.key["metric"])
    assert comparison.warnings and comparison.warnings[0].startswith("The model under audit differs"), comparison.warnings


@pytest.mark.slow
@pytest.mark.prefect
def test_the_validity_bench_runs_quick(tmp_path):
    """bench/validity.py --quick: every arm runs (one world each here) and the last line is the JSON
    object other tools read, with exactly its keys. No target is checked on so few worlds."""
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[2] / "bench" / "validity.py"
    done = subprocess.run([sys.executable, str(bench), "--quick", "--runs", "1", "--truth-pairs", "100",
                           "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == {"bench", "arms", "seconds"} and result["bench"] == "validity"
    assert {arm: set(figures) for arm, figures in result["arms"].items()} == {
        "null": {"runs", "false_positive_rate"}, "default": {"runs", "power", "coverage", "confounded_rate"},
        "weak": {"runs", "power", "planted_effect", "comparisons"}, "noisy": {"runs", "power"},
        "confound": {"runs", "finding_rate", "confounded_rate"}, "clusters": {"runs", "coverage", "cluster_to_row_width"},
        "few": {"runs", "coverage"}, "text_side": {"runs", "text_called_rate", "image_called_rate"},
    }
    assert all(figures["runs"] == 1 for figures in result["arms"].values())
    assert result["arms"]["weak"]["comparisons"] >= 100 and result["arms"]["clusters"]["cluster_to_row_width"] > 1
