"""Text-to-image counterfactual sets: planning, shared latents and attention, the set judge, and the
whole audit from templates on tiny models (the published sets validate and an evaluate-only audit
reads them as they are)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from counterfactual_lab.config.audit_config import AuditConfig, JudgeSection
from counterfactual_lab.errors import ConfigError, UserError
from counterfactual_lab.generation.text2image import TextToImageSetsEditor
from counterfactual_lab.generation.batch import generate_batch
from counterfactual_lab.generation.attention_sharing import AttentionSharing, SharedRow, token_alignment
from counterfactual_lab.config.methods import check_method_params
from counterfactual_lab.judge.sets import judge_member_sets, pairwise_scores
from counterfactual_lab.storage.files import ImageStore
from counterfactual_lab.config.audit_config import TEMPLATES_URI
from counterfactual_lab.generation.text2image_sets import (
    check_text2image,
    chunk_sets,
    plan_member_sets,
    templates_from_captions,
    templates_from_config,
)

TEMPLATES = ["a photo of a {race} {gender} doctor", "a photo of a {gender} nurse"]
ATTRIBUTES = {"gender": ["female", "male"], "race": ["Black", "White"]}


def config(model: str = "unused", **generation) -> AuditConfig:
    params = {"templates": TEMPLATES, **generation.pop("params", {})}
    return AuditConfig.parse_config({
        "attributes": ATTRIBUTES,
        "generation": {"method": "text2image-sets", "model": model, "steps": 2, "seeds_per_target": 2,
                       "resolution": 32, "params": params, **generation},
    })


# ---- planning ----


def test_every_combination_of_a_template_is_one_set_per_seed():
    cfg = config(seeds_per_target=2)
    spec = cfg.dataset_spec()
    assert (spec.name, spec.uri) == ("text2image-sets", TEMPLATES_URI)  # no dataset is read
    items = plan_member_sets(templates_from_config(cfg, spec), cfg)
    assert len(items) == (4 + 2) * 2
    doctor = [i for i in items if i.attribute == "race+gender" and i.seed == 0]
    assert [i.counterfactual_caption for i in doctor] == [
        "a photo of a Black female doctor", "a photo of a Black male doctor",
        "a photo of a White female doctor", "a photo of a White male doctor",
    ]
    assert {i.caption for i in doctor} == {"a photo of a Black female doctor"}  # the set's reference
    assert doctor[3].attribute_values == (("race", "White"), ("gender", "male"))
    assert doctor[3].target_value == "White+male"
    assert len({i.set_id for i in doctor}) == 1
    assert len({i.set_id for i in items}) == 4  # 2 templates × 2 seeds
    assert len({i.content_key for i in items}) == len(items)
    # a member's key is its prompt, seed and generator: another template list keeps it
    other = config(seeds_per_target=2, params={"templates": TEMPLATES[:1]})
    again = plan_member_sets(templates_from_config(other, other.dataset_spec()), other)
    assert {i.content_key for i in again} <= {i.content_key for i in items}
    # with attention sharing, the reference prompt enters the key too
    shared = config(seeds_per_target=2, params={"attention_sharing": 0.5})
    assert not {i.content_key for i in plan_member_sets(templates_from_config(shared, shared.dataset_spec()), shared)} & {
        i.content_key for i in items}


def test_sets_are_never_split_across_batches():
    cfg = config(seeds_per_target=3)
    items = plan_member_sets(templates_from_config(cfg, cfg.dataset_spec()), cfg)
    batches = chunk_sets(items, 5)
    for batch in batches:
        for set_id in {i.set_id for i in batch}:
            assert sum(i.set_id == set_id for i in items) == sum(i.set_id == set_id for i in batch)
    assert sum(len(b) for b in batches) == len(items)
    assert max(len(b) for b in batches) <= 5
    assert [len(b) for b in chunk_sets(items, 2)] == [4, 4, 4, 2, 2, 2]  # a set of 4 is a batch of its own


def test_captions_become_sets_through_the_text_counterfactuals():
    cfg = AuditConfig.parse_config({
        "dataset": {"uri": "unused"}, "attributes": {"gender": ["female", "male"]},
        "generation": {"method": "text2image-sets", "model": "unused"},
    })
    valid = pl.DataFrame({"id": ["r1"], "caption": ["a man reading in a park"], "label": ["teacher"], "gender": [None]})
    (template,) = templates_from_captions(valid, cfg, cfg.dataset_spec())
    assert [prompt for _, prompt in template.members] == ["a woman reading in a park", "a man reading in a park"]
    assert template.label == "teacher" and template.source_id == "r1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": {"templates": ["a photo of a {occupation} doctor"]}}, "uses {occupation}, which is not in 'attributes'"),
        ({"params": {"templates": ["a photo of a {race} doctor"]}}, "attributes.gender is in no template"),
        ({"params": {"templates": ["a photo of a doctor"]}}, "has no {attribute} placeholder"),
        ({"params": {"templates": ["a photo of a {gender!r} doctor", "{race}"]}}, "must be a plain attribute name"),
        ({"params": {"templates": []}}, "non-empty list"),
        ({"params": {"attention_sharing": 1.5}}, r"attention_sharing must be in \[0, 1\]"),
    ],
)
def test_bad_templates_are_refused_with_the_key(change, message):
    cfg = config(**change)
    with pytest.raises(UserError, match=message):
        check_method_params(cfg.generation)
        check_text2image(cfg, cfg.dataset_spec())


def test_a_dataset_beside_templates_is_refused_and_one_without_them_required():
    with_uri = AuditConfig.parse_config({
        "dataset": {"uri": "./data"}, "attributes": ATTRIBUTES,
        "generation": {"method": "text2image-sets", "params": {"templates": TEMPLATES}},
    })
    with pytest.raises(ConfigError, match="no dataset is read"):
        with_uri.dataset_spec()
    named = AuditConfig.parse_config({
        "dataset": {"name": "occupations"}, "attributes": ATTRIBUTES,
        "generation": {"method": "text2image-sets", "params": {"templates": TEMPLATES}},
    })
    assert named.dataset_spec().name == "occupations"
    with pytest.raises(ConfigError, match="config 'dataset' is required"):
        AuditConfig.parse_config({"generation": {"method": "img2img"}}).dataset_spec()


# ---- attention sharing ----


def test_token_alignment_pairs_shared_words_bos_eos_and_padding():
    # reference: BOS a photo of a White doctor EOS ; member: BOS a photo of a Middle Eastern doctor EOS
    reference, member = [0, 1, 2, 3, 1, 7, 9, 99], [0, 1, 2, 3, 1, 5, 6, 9, 99]
    ref_cols, mem_cols = token_alignment(reference, member, length=12)
    pairs = dict(zip(mem_cols, ref_cols))
    assert [pairs[i] for i in range(5)] == [0, 1, 2, 3, 4]  # BOS and "a photo of a"
    assert 5 not in pairs and 6 not in pairs  # the member's own words keep their maps
    assert pairs[7] == 6 and pairs[8] == 7  # "doctor" and EOS
    assert [pairs[i] for i in (9, 10, 11)] == [8, 9, 10]  # padding, position by position


def test_injection_replaces_shared_columns_of_the_conditional_half_only():
    heads, queries, keys = 2, 3, 4
    probs = torch.rand(2 * 2 * heads, queries, keys)  # CFG: [uncond ref, uncond member, cond ref, cond member]
    row = SharedRow(row=1, reference=0, member_tokens=torch.tensor([0, 2]), reference_tokens=torch.tensor([1, 3]))
    sharing = AttentionSharing([row], prompts=2, steps=4, cross=0.5, self_=0.25)
    edited = sharing.edit(probs, heads, is_cross=True).view(4, heads, queries, keys)
    original = probs.view(4, heads, queries, keys)
    assert torch.equal(edited[:3], original[:3])  # the unconditional half and the reference untouched
    assert torch.equal(edited[3][..., [0, 2]], original[2][..., [1, 3]])
    assert torch.equal(edited[3][..., [1, 3]], original[3][..., [1, 3]])
    self_edited = sharing.edit(probs, heads, is_cross=False).view(4, heads, queries, keys)
    assert torch.equal(self_edited[3], original[2])
    sharing.step = 1
    assert sharing.active(True, 16) and not sharing.active(False, 16)  # int(4 × 0.25) = 1 self step
    assert not sharing.active(False, 17 * 17)  # self-attention only at ≤ 16×16 positions
    sharing.step = 2
    assert not sharing.active(True, 16)


# ---- the editor: shared latents ----


@pytest.fixture(scope="module")
def shared_members(generator_models):
    cfg = config(str(generator_models["text2image"]), seeds_per_target=1,
                 params={"attention_sharing": 0.8, "self_attention_sharing": 0.4})
    items = plan_member_sets(templates_from_config(cfg, cfg.dataset_spec()), cfg)
    return cfg, [i for i in items if i.attribute == "race+gender"]


def first_step_latents(editor, items):
    """What the UNet is given at the first step, per item (the shared initial latents, scaled)."""
    seen = []
    hook = editor.pipeline.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()) if not seen else None)
    try:
        images = editor.edit(items, [None] * len(items))
    finally:
        hook.remove()
    return images, seen[0]


def test_members_of_a_set_share_their_initial_latents_and_a_member_alone_is_the_same(shared_members, tmp_path):
    cfg, members = shared_members
    editor = TextToImageSetsEditor(cfg.generation, device="cpu")
    together, sample = first_step_latents(editor, members)
    cond = sample[len(members):]  # [uncond × 4, cond × 4]
    assert all(torch.equal(cond[0], cond[i]) for i in range(1, 4))
    # one member alone (its reference comes along as a hidden row): the same noise, the same image
    alone, alone_sample = first_step_latents(editor, [members[2]])
    assert alone_sample.shape[0] == 4  # the member and its hidden reference, each with CFG
    assert torch.equal(alone_sample[2], cond[0])
    difference = np.abs(np.asarray(alone[0], int) - np.asarray(together[2], int)).max()
    assert difference <= 2  # batched kernels sum in another order: at most a grey level or two
    # through the batch runner: one record per member, images in the store
    records = generate_batch(members, cfg.generation, ImageStore(str(tmp_path)), device="cpu", editor=editor)
    assert [r.status for r in records] == ["generated"] * 4


def first_step_prediction(editor, items):
    """The UNet's noise prediction at the first step (rows [uncond…, cond…])."""
    seen = []
    hook = editor.pipeline.unet.register_forward_hook(lambda _m, _a, out: seen.append(out[0].clone()) if not seen else None)
    try:
        editor.edit(items, [None] * len(items))
    finally:
        hook.remove()
    return seen[0]


def test_attention_sharing_moves_the_members_and_leaves_the_reference(shared_members):
    cfg, members = shared_members
    shared = first_step_prediction(TextToImageSetsEditor(cfg.generation, device="cpu"), members)[4:]
    plain_cfg = config(cfg.generation.model, seeds_per_target=1)
    plain = first_step_prediction(TextToImageSetsEditor(plain_cfg.generation, device="cpu"), members)[4:]
    change = (shared - plain).abs().flatten(1).amax(dim=1)
    assert change[0] < 1e-4  # the reference takes no maps (only the explicit attention kernel differs)
    assert (change[1:] > 1e-3).all()  # the others took the reference's maps


# ---- the set judge ----


class TableEmbedder:
    def __init__(self, images, texts):
        self.images, self.texts = images, texts

    def embed_image_uris(self, uris, keys, load_image, batch_size=32):
        return np.array([self.images[k] for k in keys], dtype=float)

    def embed_texts(self, texts, batch_size=32):
        return np.array([self.texts.get(t, [0.0, 0.0, 1.0]) for t in texts], dtype=float)


def member(key, set_id, seed, prompt, gender, source="t1"):
    return {"content_key": key, "set_id": set_id, "seed": seed, "source_id": source, "image_uri": f"mem://{key}",
            "counterfactual_caption": prompt, "status": "generated", "error": None, "method": "text2image-sets",
            "attribute_values": [{"attribute": "gender", "value": gender}]}


def test_pairwise_scores_by_hand():
    images = np.array([[1.0, 0.0], [0.6, 0.8]])
    texts = np.array([[1.0, 0.0], [0.0, 1.0]])
    image, direction = pairwise_scores(images, texts)
    assert image[0, 1] == pytest.approx(0.6) and np.isnan(image[0, 0])
    # I0 − I1 = (0.4, −0.8), T0 − T1 = (1, −1): cos = (0.4 + 0.8) / (√0.8 · √2)
    assert direction[0, 1] == pytest.approx(1.2 / (np.sqrt(0.8) * np.sqrt(2)))
    assert direction[1, 0] == pytest.approx(direction[0, 1])


def test_a_set_is_kept_only_whole_and_the_best_by_mean_direction():
    texts = {"a woman": [1.0, 0.0, 0.0], "a man": [0.0, 1.0, 0.0]}
    images = {
        "a0": [1.0, 0.2, 0.0], "b0": [0.2, 1.0, 0.0],    # seed 0: moves with the prompt
        "a1": [1.0, 0.6, 0.0], "b1": [0.6, 1.0, 0.0],    # seed 1: moves less
        "a2": [0.2, 1.0, 0.0], "b2": [1.0, 0.2, 0.0],    # seed 2: moves against the prompt
    }
    rows = [member(f"{g}{s}", f"set{s}", s, p, v) for s in range(3) for g, p, v in (("a", "a woman", "female"), ("b", "a man", "male"))]
    judge = JudgeSection(thresholds={"text": -1, "direction": 0.5, "image": -1}, check_attribute=True)
    # the attribute check's prompts: female/male/non-binary on the first two axes
    embedder = TableEmbedder(images, {**texts, "a photo of a woman": [1.0, 0, 0], "a photo of a man": [0, 1.0, 0],
                                      "a photo of a non-binary person": [0, 0, 1.0]})
    out = judge_member_sets(pl.DataFrame(rows), judge, embedder, lambda uri: None, keep_per_target=1,
                            vocabulary={"gender": ["female", "male", "non-binary"]})
    by_key = {r["content_key"]: r for r in out.to_dicts()}
    assert by_key["a0"]["kept"] and by_key["b0"]["kept"]
    assert by_key["a1"]["drop_reason"] == by_key["b1"]["drop_reason"] == "not_best_set"
    assert by_key["a2"]["drop_reason"] == by_key["b2"]["drop_reason"] == "below_direction_threshold"
    assert by_key["a0"]["attribute_ok"] is True
    for row in out.filter(pl.col("kept")).to_dicts():
        assert row["direction_similarity"] >= 0.5


def test_a_failed_member_drops_its_set_and_a_lone_member_has_nothing_to_compare():
    rows = [member("a0", "s0", 0, "a woman", "female"), member("b0", "s0", 0, "a man", "male"),
            member("c0", "s1", 1, "a woman", "female")]
    rows[1].update(status="failed", image_uri=None, error="OOM")
    embedder = TableEmbedder({"a0": [1.0, 0, 0], "c0": [1.0, 0, 0]}, {"a woman": [1.0, 0, 0]})
    out = judge_member_sets(pl.DataFrame(rows), JudgeSection(thresholds={"text": -1, "direction": -1, "image": -1}),
                            embedder, lambda uri: None, keep_per_target=1, vocabulary={})
    assert out["drop_reason"].to_list() == ["set_incomplete", "generation_failed: OOM", "below_image_threshold"]
    assert not out["kept"].any()


# ---- the whole audit from templates ----


def write_templates_config(path: Path, tiny_models, generator_models, out: str, **generation) -> str:
    clip = str(tiny_models["clip"])
    raw = {
        "attributes": ATTRIBUTES,
        "generation": {"method": "text2image-sets", "model": str(generator_models["text2image"]), "steps": 2,
                       "seeds_per_target": 3, "keep_per_target": 1, "batch_size": 4, "resolution": 32,
                       "params": {"templates": TEMPLATES, "attention_sharing": 0.6}, **generation},
        # a random-weight judge: text and image pass, direction decides (some sets fail, some pass)
        "judge": {"model": clip, "thresholds": {"text": -1.0, "direction": 0.0, "image": -1.0}, "check_attribute": False},
        "audit": {"model": clip, "labels": ["doctor", "nurse"], "bootstrap_samples": 50},
        "output": {"uri": out},
        "runtime": {"max_workers": 2},
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def template_run(prefect_server, tiny_models, generator_models, tmp_path_factory):
    from counterfactual_lab.flows.audit import dataset_audit

    out = str(tmp_path_factory.mktemp("t2i-out"))
    path = write_templates_config(tmp_path_factory.mktemp("t2i-config") / "t2i.yaml", tiny_models, generator_models, out)
    return Path(dataset_audit(config_uri=path)), out


@pytest.mark.slow
@pytest.mark.prefect
def test_templates_make_judged_sets_published_as_a_valid_dataset_and_evaluated(template_run):
    run, _ = template_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and run.name.startswith("text2image-sets-")
    counts, accounting = manifest["generation_counts"], manifest["row_accounting"]
    assert counts["calls_fixed"] == (4 + 2) * 3
    assert counts["calls"] <= counts["calls_fixed"] and counts["rounds"] >= 1
    assert accounting["rows_in"] == accounting["valid"] == 2  # the templates
    assert accounting["planned"] == accounting["kept"] + accounting["dropped"] + accounting["failed"]

    judged = pl.read_parquet(run / "counterfactuals.parquet")
    kept = judged.filter(pl.col("kept"))
    assert kept.height > 0 and judged.filter(pl.col("drop_reason") == "below_direction_threshold").height > 0
    for set_id, members in kept.group_by("set_id"):
        # whole sets only, and every member passed every threshold
        assert members.height == judged.filter(pl.col("set_id") == set_id[0]).height
        assert (members["direction_similarity"] >= 0.0).all() and members["drop_reason"].null_count() == members.height
    assert kept.group_by("source_id").agg(pl.col("set_id").n_unique())["set_id"].max() == 1  # keep_per_target

    # the published dataset: SocialCounterfactuals layout, the kept members, read by its own spec
    sets = pl.read_parquet(run / "sets" / "part-00000.parquet")
    assert sets.columns[:8] == ["id", "image", "caption", "counterfactual_set", "a1_type", "a1", "a2_type", "a2"]
    assert sets.schema["image"] == pl.Struct({"bytes": pl.Binary, "path": pl.String})
    assert sorted(sets["caption"]) == sorted(kept["counterfactual_caption"])
    doctor = sets.filter(pl.col("a2_type").is_not_null())
    assert set(doctor["a1_type"]) <= {"race"} and set(doctor["a2_type"]) <= {"gender"}

    # evaluated as an evaluate-only dataset: every image a counterfactual, clustered by its set
    predictions = pl.read_parquet(run / "predictions.parquet")
    assert predictions.height == sets.height * 2  # once per audited attribute
    assert set(predictions["variant"]) == {"counterfactual"}
    assert set(predictions["source_id"]) == set(sets["counterfactual_set"])
    assert (run / "metrics.parquet").exists() and "made from text" in (run / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.prefect
def test_the_published_sets_validate_and_an_evaluate_only_audit_reads_them(template_run, tiny_models, tmp_path, capsys):
    from counterfactual_lab.flows.cli import main
    from counterfactual_lab.flows.audit import dataset_audit

    run, _ = template_run
    spec = run / "sets" / "dataset.yaml"
    assert main(["validate", "--spec", str(spec), "--out", str(tmp_path / "validation"), "--max-invalid-fraction", "0"]) == 0
    assert "quarantined: 0" in capsys.readouterr().out
    clip = str(tiny_models["clip"])
    config = tmp_path / "evaluate.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": {"spec": str(spec)}, "attributes": ATTRIBUTES,
        "audit": {"model": clip, "labels": ["doctor", "nurse"], "bootstrap_samples": 50},
        "output": {"uri": str(tmp_path / "out")}, "runtime": {"max_workers": 2},
    }))
    evaluated = Path(dataset_audit(config_uri=str(config)))
    theirs = pl.read_parquet(evaluated / "predictions.parquet").drop("run_id", "dataset")
    ours = pl.read_parquet(run / "predictions.parquet").drop("run_id", "dataset")
    # the same images, the same comparison groups, the same answers
    key = ["attribute", "content_key"]
    assert theirs.sort(key).select(*key, "set_id", "group", "top1").equals(ours.sort(key).select(*key, "set_id", "group", "top1"))


def test_preflight_passes_a_template_config_without_a_dataset(tiny_models, generator_models, tmp_path):
    from counterfactual_lab.runs.preflight import check_audit

    path = write_templates_config(tmp_path / "t.yaml", tiny_models, generator_models, str(tmp_path / "out"))
    assert check_audit(AuditConfig.from_yaml(path)).uri == TEMPLATES_URI
    broken = yaml.safe_load(Path(path).read_text())
    broken["attributes"]["age"] = ["young", "elderly"]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(ConfigError, match="attributes.age is in no template"):
        check_audit(AuditConfig.from_yaml(tmp_path / "b.yaml"))


class GroupingEditor:
    """Records each call's items; out of memory above ``limit`` items (as a CUDA OOM reads)."""

    method = "text2image-sets"

    def __init__(self, limit: int):
        self.limit, self.calls = limit, []

    def batch_group(self, item):
        return item.set_id

    def edit(self, items, sources):
        assert sources == [None] * len(items)  # text-to-image: no source image is read
        if len(items) > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.calls.append([i.set_id for i in items])
        from PIL import Image

        return [Image.new("RGB", (8, 8), (i.seed, 0, 0)) for i in items]


def test_a_batch_packs_whole_sets_into_calls_and_halves_by_sets_on_oom(tmp_path):
    cfg = config(seeds_per_target=2, batch_size=12)
    items = plan_member_sets(templates_from_config(cfg, cfg.dataset_spec()), cfg)  # sets of 4, 4, 2, 2
    editor = GroupingEditor(limit=6)
    records = generate_batch(items, cfg.generation, ImageStore(str(tmp_path)), device="cpu", editor=editor)
    assert [r.status for r in records] == ["generated"] * len(items)
    assert {r.oom_halvings for r in records} == {1}
    for call in editor.calls:  # after halving to 6: never a set split, never more than 6 items
        assert len(call) <= 6
        for set_id in set(call):
            assert call.count(set_id) == sum(i.set_id == set_id for i in items)
