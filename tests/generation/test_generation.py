"""Generation: three methods end to end on tiny models (CPU, 2 steps, 32 px), determinism,
the content-addressed cache, out-of-memory halving and per-item failure."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactual_lab.config.audit_config import GenerationSection
from counterfactual_lab.errors import UserError
from counterfactual_lab.generation.records import CACHED, FAILED, GENERATED
from counterfactual_lab.generation.ledits import LeditsEditor, concept_word
from counterfactual_lab.generation.batch import generate_batch, is_out_of_memory
from counterfactual_lab.generation.editor import make_editor
from counterfactual_lab.generation.editor import output_size
from counterfactual_lab.plan.work_items import WorkItem
from counterfactual_lab.storage.files import ImageStore

pytestmark = [
    pytest.mark.slow,
    # diffusers 0.42's DPMSolver (LEDITS++) builds sigmas with np.array(tensor) under numpy 2.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine run ~10x faster on one thread than on two
    threads fighting other processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

CHANGES = [("male", "female", "make the man a woman"), ("female", "male", "make the woman a man")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two random 40×36 source images in a store: source key -> URI."""
    store = ImageStore(str(tmp_path_factory.mktemp("sources")))
    uris = {}
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (36, 40, 3), dtype=np.uint8)
        key = f"source{i}"
        uris[key] = store.put_png(key, Image.fromarray(pixels))
    return uris


def make_items(sources, method: str, seeds=(0,), changes=CHANGES[:1]) -> list[WorkItem]:
    items = []
    for source_key, uri in sources.items():
        for source_value, target_value, instruction in changes:
            for seed in seeds:
                caption = f"a photo of a {'woman' if target_value == 'female' else 'man'}"
                key = hashlib.sha256(f"{method}|{source_key}|{target_value}|{seed}".encode()).hexdigest()
                items.append(
                    WorkItem(
                        source_id=source_key, source_key=source_key, source_image_uri=uri,
                        caption="a photo of a person", attribute="gender", source_value=source_value,
                        target_value=target_value, seed=seed, counterfactual_caption=caption,
                        explanation="", instruction=instruction, generator=method, content_key=key,
                    )
                )
    return items


def config(tiny_models, method: str, **overrides) -> GenerationSection:
    fields = dict(method=method, model=str(tiny_models[method]), steps=2, resolution=32, batch_size=4)
    fields.update(overrides)
    return GenerationSection(**fields)


def pixels(uri: str) -> np.ndarray:
    with Image.open(uri) as image:
        return np.asarray(image.convert("RGB")).astype(int)


class CountingEditor:
    """Wraps a real editor; counts calls, and can fail on demand like a GPU would."""

    def __init__(self, inner, oom_above: int | None = None, poisoned: set[str] = frozenset()):
        self.inner = inner
        self.method = inner.method
        self.calls: list[int] = []
        self.oom_above = oom_above
        self.poisoned = poisoned

    def edit(self, items, sources):
        self.calls.append(len(items))
        if self.oom_above is not None and len(items) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if any(item.content_key in self.poisoned for item in items):
            raise ValueError("this item breaks the pipeline")
        return self.inner.edit(items, sources)


@pytest.mark.parametrize("method", ["instruct-pix2pix", "img2img", "ledits"])
def test_each_method_end_to_end(tiny_models, sources, tmp_path, method):
    items = make_items(sources, method, changes=CHANGES)
    store = ImageStore(str(tmp_path / "out"))

    records = generate_batch(items, config(tiny_models, method), store, device="cpu")

    assert [r.content_key for r in records] == [i.content_key for i in items]
    assert [r.status for r in records] == [GENERATED] * len(items)
    for item, record in zip(items, records):
        assert record.image_uri == store.uri(item.content_key)
        assert record.error is None and record.seconds > 0
        with Image.open(record.image_uri) as image:
            assert image.format == "PNG" and image.size == (32, 32)
    # The two target values of one source are different edits.
    assert not np.array_equal(pixels(records[0].image_uri), pixels(records[1].image_uri))


def test_same_inputs_same_bytes_whatever_the_batch(tiny_models, sources, tmp_path):
    items = make_items(sources, "instruct-pix2pix", seeds=(0, 1))
    runs = []
    for name, batch_size in [("a", 4), ("b", 4), ("c", 1)]:
        store = ImageStore(str(tmp_path / name))
        records = generate_batch(items, config(tiny_models, "instruct-pix2pix", batch_size=batch_size), store, device="cpu")
        runs.append([open(r.image_uri, "rb").read() for r in records])
    assert runs[0] == runs[1]  # same batch: identical bytes
    # Another batch size: the same images up to float rounding in batched kernels.
    for batched, alone in zip(runs[0], runs[2]):
        a = np.asarray(Image.open(io.BytesIO(batched))).astype(int)
        b = np.asarray(Image.open(io.BytesIO(alone))).astype(int)
        assert np.abs(a - b).max() <= 2 and (a != b).mean() < 0.01
    # Different seeds of one source and target are different candidates.
    assert runs[0][0] != runs[0][1]


def test_ledits_inverts_each_source_once(tiny_models, sources, tmp_path):
    generation = config(tiny_models, "ledits")
    editor = LeditsEditor(generation, device="cpu")
    items = make_items(sources, "ledits", seeds=(0, 1), changes=CHANGES)  # 2 sources × 2 targets × 2 seeds

    first = generate_batch(items[:4], generation, ImageStore(str(tmp_path / "a")), device="cpu", editor=editor)
    rest = generate_batch(items[4:], generation, ImageStore(str(tmp_path / "a")), device="cpu", editor=editor)

    assert [r.status for r in first + rest] == [GENERATED] * 8
    assert editor.inversions_computed == 2


def test_second_call_generates_nothing(tiny_models, sources, tmp_path):
    generation = config(tiny_models, "img2img")
    items = make_items(sources, "img2img", seeds=(0, 1))
    store = ImageStore(str(tmp_path / "out"))
    editor = CountingEditor(make_editor(generation, "cpu"))

    first = generate_batch(items, generation, store, device="cpu", editor=editor)
    calls = list(editor.calls)
    second = generate_batch(items, generation, store, device="cpu", editor=editor)

    assert calls == [4]
    assert editor.calls == calls
    assert [r.status for r in second] == [CACHED] * 4
    assert [r.image_uri for r in second] == [r.image_uri for r in first]


def test_out_of_memory_halves_the_batch(tiny_models, sources, tmp_path):
    generation = config(tiny_models, "img2img", batch_size=4)
    items = make_items(sources, "img2img", seeds=(0, 1))
    editor = CountingEditor(make_editor(generation, "cpu"), oom_above=1)

    records = generate_batch(items, generation, ImageStore(str(tmp_path / "out")), device="cpu", editor=editor)

    assert [r.status for r in records] == [GENERATED] * 4
    assert editor.calls == [4, 2, 1, 1, 1, 1]  # halved twice, and the smaller size sticks
    assert [r.oom_halvings for r in records] == [2, 2, 2, 2]


def test_out_of_memory_on_one_item_fails_it_alone(tiny_models, sources, tmp_path):
    generation = config(tiny_models, "img2img", batch_size=2)
    items = make_items(sources, "img2img")
    editor = CountingEditor(make_editor(generation, "cpu"), oom_above=0)

    records = generate_batch(items, generation, ImageStore(str(tmp_path / "out")), device="cpu", editor=editor)

    assert [r.status for r in records] == [FAILED, FAILED]
    assert all("out of memory" in r.error for r in records)
    assert all(r.image_uri is None for r in records)


def test_poisoned_items_fail_alone(tiny_models, sources, tmp_path):
    generation = config(tiny_models, "img2img")
    items = make_items(sources, "img2img", seeds=(0, 1))
    missing = items[0].__class__(**{**items[0].to_dict(), "source_image_uri": str(tmp_path / "gone.png"),
                                     "content_key": "missing-source"})
    items = [missing, *items]
    editor = CountingEditor(make_editor(generation, "cpu"), poisoned={items[2].content_key})

    records = generate_batch(items, generation, ImageStore(str(tmp_path / "out")), device="cpu", editor=editor)

    assert [r.status for r in records] == [FAILED, GENERATED, FAILED, GENERATED, GENERATED]
    assert "gone.png" in records[0].error and "unreadable" in records[0].error
    assert "this item breaks the pipeline" in records[2].error
    assert editor.calls == [4, 1, 1, 1, 1]  # the batch failed, then each item ran alone


def test_bad_generation_params_name_the_key(tiny_models):
    with pytest.raises(UserError, match=r"generation.params.strenght is not understood by method 'img2img' \(did you mean 'strength'\?\)"):
        make_editor(config(tiny_models, "img2img", params={"strenght": 0.5}), "cpu")
    with pytest.raises(UserError, match="strength must be in"):
        make_editor(config(tiny_models, "img2img", params={"strength": 1.5}), "cpu")
    with pytest.raises(UserError, match="multiple of 32 for method 'ledits'"):
        make_editor(config(tiny_models, "ledits", resolution=48), "cpu")


def test_sizes_concepts_and_oom_detection():
    source = Image.new("RGB", (41, 70))
    assert output_size(source, None, 8) == (40, 64)
    assert output_size(source, None, 32) == (32, 64)
    assert output_size(source, 32, 8) == (32, 32)
    assert concept_word("gender", "female") == "woman"
    assert concept_word("race", "asian") == "asian person"
    assert concept_word("gender", "female", {"female": "lady"}) == "lady"
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(ValueError("out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_records_round_trip_as_plain_data_and_nothing_else_is_accepted():
    """A stored batch result is rebuilt with GenerationRecord.from_dict alone: exact fields and types."""
    from counterfactual_lab.generation.records import GenerationRecord

    records = [
        GenerationRecord("a" * 64, "out/images/a.png", GENERATED, oom_halvings=1, seconds=0.5),
        GenerationRecord("b" * 64, None, FAILED, error="MemoryError: too big"),
        GenerationRecord("c" * 64, "out/images/c.png", CACHED),
    ]
    assert [GenerationRecord.from_dict(r.to_dict()) for r in records] == records
    good = records[0].to_dict()
    bad = {
        "not an object": ["a" * 64],
        "an unknown field": {**good, "__class__": "os.system"},
        "a missing field": {k: v for k, v in good.items() if k != "seconds"},
        "a wrong type": {**good, "oom_halvings": "1"},
        "a bool for a count": {**good, "oom_halvings": True},
        "an unknown status": {**good, "status": "pickled"},
        "a negative count": {**good, "oom_halvings": -1},
        "an infinite time": {**good, "seconds": float("inf")},
    }
    for what, data in bad.items():
        try:
            GenerationRecord.from_dict(data)
        except ValueError:
            continue
        pytest.fail(f"GenerationRecord.from_dict accepted a record with {what}")


def _planned(sources, method: str, attributes: dict[str, list[str]]) -> list[WorkItem]:
    """The real plan for the two sources: one a man (known), one whose gender nobody states."""
    import polars as pl

    from counterfactual_lab.config.audit_config import AuditConfig
    from counterfactual_lab.plan.work_items import plan_work_items
    from counterfactual_lab.config.dataset_spec import DatasetSpec

    keys = sorted(sources)
    valid = pl.DataFrame(
        {"id": ["man", "someone"], "content_key": keys, "image_uri": [sources[k] for k in keys],
         "caption": ["a man at work", "a person at work"], "gender": ["male", None], "age": ["young", "young"]}
    )
    audit = AuditConfig.parse_config(
        {"dataset": {"uri": "unused"}, "attributes": attributes,
         "generation": {"method": method, "seeds_per_target": 1, "keep_per_target": 1}}
    )
    return plan_work_items(valid, audit, DatasetSpec(uri="unused"))


@pytest.mark.parametrize("method", ["instruct-pix2pix", "img2img", "ledits"])
def test_reconstructions_and_controls_go_through_each_editor(tiny_models, sources, tmp_path, method):
    """A known value reconstructs with target = source; an unknown one with no change asked
    ("make no changes"; LEDITS++: no concept, the inversion alone)."""
    from counterfactual_lab.plan.work_items import unique_by_content_key

    items = unique_by_content_key(_planned(sources, method, {"gender": ["female", "male"]}))
    reconstructions = [i for i in items if i.variant == "reconstruction"]
    assert len(reconstructions) == 4 and sum(i.control for i in reconstructions) == 2
    assert {i.target_value for i in reconstructions} == {"male", None}
    store = ImageStore(str(tmp_path / "out"))
    records = generate_batch(items, config(tiny_models, method), store, device="cpu")
    assert [r.status for r in records] == [GENERATED] * len(items)
    by_key = {r.content_key: pixels(r.image_uri) for r in records}
    man = [i for i in items if i.source_id == "man"]
    recon, counterfactual, control = man[0], man[1], man[2]
    assert (recon.variant, counterfactual.variant, control.control) == ("reconstruction", "counterfactual", True)
    assert not np.array_equal(by_key[recon.content_key], by_key[counterfactual.content_key])
    if method != "ledits":  # LEDITS++ is deterministic given its shared inversion: seeds do not matter
        assert not np.array_equal(by_key[recon.content_key], by_key[control.content_key])


def test_an_img2img_reconstruction_is_the_same_image_for_every_attribute(tiny_models, sources, tmp_path):
    """Why one key serves the gender and the age reconstruction: img2img reads the caption only."""
    import dataclasses

    items = _planned(sources, "img2img", {"gender": ["female", "male"], "age": ["young", "elderly"]})
    gender, age = (next(i for i in items if i.source_id == "man" and i.attribute == a and i.variant == "reconstruction")
                   for a in ("gender", "age"))
    assert gender.content_key == age.content_key and gender.target_value != age.target_value
    # Generated apart, under keys of their own, they still come out the same, byte for byte.
    apart = [dataclasses.replace(gender, content_key="as-gender"), dataclasses.replace(age, content_key="as-age")]
    store = ImageStore(str(tmp_path / "out"))
    records = [generate_batch([item], config(tiny_models, "img2img"), store, device="cpu")[0] for item in apart]
    assert open(records[0].image_uri, "rb").read() == open(records[1].image_uri, "rb").read()


# img2img is left out: the tiny random img2img model at 2 steps makes nearly the same image for
# both prompts, so it could not tell a swapped prompt from the right one.
@pytest.mark.parametrize("method", ["instruct-pix2pix", "ledits"])
def test_one_image_with_two_prompts_in_one_batch_equals_each_made_alone(tiny_models, sources, tmp_path, method):
    """A mutation check planted a bug that gave the second prompt of a source the first one's edit
    when both were in one batch; each edit must be the one its prompt asks for, batched or not."""
    source = dict(list(sources.items())[:1])
    items = make_items(source, method, changes=CHANGES)  # one source, two different prompts
    together = generate_batch(items, config(tiny_models, method, batch_size=2), ImageStore(str(tmp_path / "together")),
                              device="cpu")
    alone = [generate_batch([item], config(tiny_models, method, batch_size=2), ImageStore(str(tmp_path / f"alone{i}")),
                            device="cpu")[0] for i, item in enumerate(items)]
    for batched, single in zip(together, alone):
        a, b = pixels(batched.image_uri), pixels(single.image_uri)
        assert np.abs(a - b).max() <= 2 and (a != b).mean() < 0.01  # float rounding in batched kernels at most
    assert np.abs(pixels(together[0].image_uri) - pixels(together[1].image_uri)).max() > 2  # two different edits
