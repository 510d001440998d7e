"""The generative probes against transformers itself, on the tiny VLM loaded the way audits load it.

Each probe's number is recomputed here the way a user would with transformers directly (one
image, no padding, the answer tokens looked up by hand) and must agree; the cache must spare the
model a rerun; sampling must not depend on the batch; unsafe folders must not load.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from counterfactual_lab.evaluate.auditees import probes
from counterfactual_lab.evaluate.auditees.answer_cache import AnswerCache, CallCounts
from counterfactual_lab.evaluate.auditees.answers import answer_shares, answer_token_ids, expected_rating, rating_answers
from counterfactual_lab.evaluate.auditees.generative import GenerativeRunner
from counterfactual_lab.evaluate.auditees.interface import ProbeImages
from counterfactual_lab.evaluate.auditees.loading import clear_loaded_models, load_generative
from counterfactual_lab.evaluate.auditees.prompts import render, resolve_format
from counterfactual_lab.evaluate.auditees import sampling
from counterfactual_lab.evaluate.auditees.sampling import counter_uniform, sequence_seed
from counterfactual_lab.errors import UnsafeModelError

YES_QUESTION = "Is this person a doctor? Answer yes or no."
LONGER_QUESTION = "Look at {image} the picture: is this person a nurse, or is this person a teacher? Answer yes or no."
LABELS = ["doctor", "nurse", "software engineer"]  # one multi-token option


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from counterfactual_lab.demo.tiny_auditees import build_tiny_auditee_models

    return build_tiny_auditee_models(tmp_path_factory.mktemp("auditee-models"))


@pytest.fixture(scope="module")
def loaded(models):
    return load_generative(str(models["vlm"]), None, "cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five distinct random images of different sizes on disk, as ProbeImages."""
    root = tmp_path_factory.mktemp("probe-images")
    rng = np.random.default_rng(3)
    uris = []
    for i in range(5):
        side = 30 + 7 * i
        path = root / f"{i}.png"
        Image.fromarray((rng.random((side, side, 3)) * 255).astype("uint8")).save(path)
        uris.append(str(path))
    load = lambda uri: Image.open(uri).convert("RGB")  # noqa: E731
    return ProbeImages(tuple(f"key{i}" for i in range(5)), tuple(uris), load)


def session(loaded, batch_size=3, cache=None, counts=None):
    runner = GenerativeRunner(loaded, batch_size=batch_size)
    return probes.ProbeSession(runner, resolve_format(loaded.processor, "auto"), "sha256:test-model", cache, counts or CallCounts())


def direct_logits(loaded, image, text):
    """The model's logits for one unpadded (image, text), as a user would compute them."""
    inputs = loaded.processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**inputs).logits[0].float(), inputs["input_ids"][0]


def test_yes_no_matches_a_direct_forward_pass_with_the_answer_tokens_looked_up_by_hand(loaded, images):
    vocab = loaded.tokenizer.get_vocab()
    # Byte-level BPE spells a leading space "Ġ": every spelling of yes/no is one token here.
    yes_ids = [vocab[t] for t in ("yes", "Ġyes", "Yes", "ĠYes", "YES", "ĠYES")]
    no_ids = [vocab[t] for t in ("no", "Ġno", "No", "ĠNo", "NO", "ĠNO")]
    frame = probes.yes_no(session(loaded), images, [YES_QUESTION, LONGER_QUESTION])  # two lengths: padding in every batch
    assert frame.height == 10 and set(frame["probe"]) == {"yes_no"}
    pictures = images.load(range(5))
    for row in frame.iter_rows(named=True):
        text = render(loaded.processor, "chat", row["prompt"])
        logits, _ = direct_logits(loaded, pictures[images.content_keys.index(row["content_key"])], text)
        p = torch.softmax(logits[-1], dim=-1)
        s_yes, s_no = float(p[yes_ids].sum()), float(p[no_ids].sum())
        assert row["value"] == pytest.approx(s_yes / (s_yes + s_no), abs=1e-6)
        assert row["answer_mass"] == pytest.approx(s_yes + s_no, rel=1e-5)
        assert row["probabilities"] == pytest.approx([s_yes, s_no], rel=1e-5)


def test_choice_scores_are_the_softmax_of_each_options_full_token_likelihood(loaded, images):
    prompt = "What is this person's job? Answer with one of: {options}."
    scoring = session(loaded, batch_size=4)
    frame = probes.choice(scoring, images, prompt, LABELS)
    assert scoring.runner._prefix_cache is True  # the KV-cache path was checked and used
    text = render(loaded.processor, "chat", prompt, LABELS)
    assert text.endswith("ASSISTANT:")
    pictures = images.load(range(5))
    for i, picture in enumerate(pictures):
        logliks = []
        for label in LABELS:
            option = loaded.tokenizer.encode(" " + label, add_special_tokens=False)
            logits, ids = direct_logits(loaded, picture, text + " " + label)
            n = len(ids)
            assert ids[n - len(option):].tolist() == option
            logp = torch.log_softmax(logits, dim=-1)
            logliks.append(sum(float(logp[n - len(option) - 1 + k, option[k]]) for k in range(len(option))))
        expected = np.exp(np.array(logliks) - max(logliks))
        expected /= expected.sum()
        row = frame.row(i, named=True)
        assert [row[f"score_{label}"] for label in LABELS] == pytest.approx(expected.tolist(), abs=1e-6)
        assert row["top1"] == LABELS[int(np.argmax(logliks))]
    assert len(loaded.tokenizer.encode(" software engineer", add_special_tokens=False)) > 1


def test_the_kv_cache_path_scores_options_as_full_passes_do_with_fewer_image_encodings(loaded, images, monkeypatch):
    pictures = images.load(range(5))
    text = render(loaded.processor, "chat", "Job? {options}", LABELS)
    encodings = []
    original = type(loaded.model.model).get_image_features

    def spy(self, pixel_values, *args, **kwargs):
        encodings.append(pixel_values.shape[0])
        return original(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(type(loaded.model.model), "get_image_features", spy)
    cached_runner = GenerativeRunner(loaded, batch_size=6)
    cached = cached_runner.option_logliks(pictures, [text] * 5, LABELS)
    check = sum(encodings[:2])  # the one-off comparison on the first image: cached + full
    assert cached_runner._prefix_cache is True and sum(encodings) - check == 5
    encodings.clear()
    full_runner = GenerativeRunner(loaded, batch_size=6)
    full_runner._prefix_cache = False
    full = full_runner.option_logliks(pictures, [text] * 5, LABELS)
    assert sum(encodings) == 5 * len(LABELS)
    np.testing.assert_allclose(cached, full, atol=1e-4)


def test_expected_rating_on_a_constructed_distribution(loaded):
    tokenizer = loaded.tokenizer
    ids = answer_token_ids(tokenizer, rating_answers(5))
    vocab_size = len(tokenizer)
    probabilities = np.zeros((2, vocab_size))
    # Row 0: the digits carry 0.1, 0.2, 0.3, 0.2, 0.2 of the mass 0.5, split over "k" and " k".
    wanted = [0.1, 0.2, 0.3, 0.2, 0.2]
    for k, share in enumerate(wanted, start=1):
        plain, spaced = tokenizer.convert_tokens_to_ids(str(k)), tokenizer.convert_tokens_to_ids(f"Ġ{k}")
        assert {plain, spaced} <= set(ids[str(k)])
        probabilities[0, plain] = 0.5 * share * 0.25
        probabilities[0, spaced] = 0.5 * share * 0.75
    probabilities[0, tokenizer.convert_tokens_to_ids("doctor")] = 0.5  # mass off the scale
    probabilities[1, tokenizer.convert_tokens_to_ids("Ġ4")] = 1.0  # certain: 4
    _, shares, mass = answer_shares(probabilities, ids)
    assert mass == pytest.approx([0.5, 1.0])
    assert shares[0] == pytest.approx(wanted)
    assert expected_rating(shares) == pytest.approx([1 * 0.1 + 2 * 0.2 + 3 * 0.3 + 4 * 0.2 + 5 * 0.2, 4.0])


def test_answer_tokens_skip_bare_spaces_and_tokens_two_answers_share():
    from counterfactual_lab.demo.tiny_auditees import build_byte_bpe_tokenizer

    bytes_only = build_byte_bpe_tokenizer(words=[])  # no merges: " yes" is "Ġ", "y", "e", "s"
    ids = answer_token_ids(bytes_only, ["yes", "no"])
    decoded = {answer: sorted(bytes_only.convert_ids_to_tokens(tokens)) for answer, tokens in ids.items()}
    assert decoded == {"yes": ["Y", "y"], "no": ["N", "n"]}
    with pytest.raises(Exception, match="no token that starts 'no' and no other answer"):
        answer_token_ids(bytes_only, ["no", "nine"])  # n and N start both


def test_the_probes_use_the_shared_tokenizer_only_under_the_models_lock(loaded, images, monkeypatch):
    # Batches of one worker share the loaded model; an unpadded encode outside the lock turns the
    # fast tokenizer's padding off under another thread's padded batch ("Already borrowed").
    tokenizer, held = loaded.tokenizer, []
    for name in ("encode", "decode"):
        def checked(*args, _original=getattr(tokenizer, name), **kwargs):
            held.append(loaded.lock._is_owned())
            return _original(*args, **kwargs)

        monkeypatch.setattr(tokenizer, name, checked)
    probes.yes_no(session(loaded), images, [YES_QUESTION])
    probes.ratings(session(loaded), images, ["How old is this person?"])
    probes.choice(session(loaded, batch_size=4), images, "Job? {options}", LABELS)
    assert held and all(held), f"{held.count(False)} of {len(held)} tokenizer calls outside the lock"


def test_probes_from_several_threads_on_one_model_answer_as_one_thread_does(loaded, images):
    rounds = 30  # without the lock 3 runs in 4 failed here (tokenizers 0.23.3: "Unable to create tensor")
    questions = [YES_QUESTION, LONGER_QUESTION]  # two lengths: every batch pads
    # One image: short batches, so the threads' tokenizer calls overlap more.
    one_image = ProbeImages(images.content_keys[:1], images.image_uris[:1], images.load_image)
    expected = probes.yes_no(session(loaded), one_image, questions)
    answers, errors = [], []

    def audit_batches():
        try:
            for _ in range(rounds):
                answers.append(probes.yes_no(session(loaded, batch_size=2), one_image, questions))
        except Exception as exc:  # noqa: BLE001 - the thread's error is the test's finding
            errors.append(repr(exc))

    threads = [threading.Thread(target=audit_batches) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(answers) == 4 * rounds
    for frame in answers:
        assert frame["value"].to_list() == pytest.approx(expected["value"].to_list(), abs=1e-6)


def test_a_rerun_is_served_from_the_output_store_and_never_calls_generate(loaded, images, tmp_path, monkeypatch):
    calls = []
    original = type(loaded.model).generate

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("input_ids", args[0] if args else None).shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(loaded.model), "generate", spy)
    decoding = dict(samples=2, temperature=1.0, max_new_tokens=5, seed=7)
    first_counts = CallCounts()
    cache = AnswerCache(str(tmp_path), counts=first_counts)
    first = probes.generate(session(loaded, cache=cache, counts=first_counts), images, ["Describe this person."], **decoding)
    cache.flush()  # one shard for the batch's answers
    assert sum(calls) == 10 and first_counts.as_dict() == {"computed": 10, "cached": 0, "objects_written": 1}
    calls.clear()
    # Another process: a new cache object on the same output root, a new runner.
    again_counts = CallCounts()
    again = probes.generate(session(loaded, batch_size=2, cache=AnswerCache(str(tmp_path)), counts=again_counts), images,
                            ["Describe this person."], **decoding)
    assert calls == [] and again_counts.as_dict() == {"computed": 0, "cached": 10, "objects_written": 0}
    assert again.equals(first)
    # One more sample asks the model for the new sample only.
    more = probes.generate(session(loaded, cache=AnswerCache(str(tmp_path))), images, ["Describe this person."],
                           **{**decoding, "samples": 3})
    assert sum(calls) == 5 and more.filter(pl.col("sample") < 2).equals(first)


def shard_files(root: Path) -> list[Path]:
    return sorted((root / "_auditee_cache" / "v2" / "shards").glob("*.json"))


def rewrite_shard(path: Path, edit) -> None:
    """Apply ``edit`` to the shard's document; with the checksum recomputed (as someone who knows the
    format would) unless ``edit`` returns False."""
    from counterfactual_lab.evaluate.auditees.answer_cache import _checksum

    document = json.loads(path.read_text())
    if edit(document) is not False:
        document["checksum"] = _checksum(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("tamper, reason", [
    ("edited value", "does not match its checksum"),
    ("out-of-range probability, checksum recomputed", "not each in [0, 1]"),
    ("planted pickle", "not a JSON object"),
    ("truncated write", "not valid JSON"),
])
def test_a_tampered_shard_is_refused_with_a_warning_naming_it_and_recomputed(loaded, images, tmp_path, caplog,
                                                                             tamper, reason):
    """Issue 17: editing a value under OUT/_auditee_cache published it with no warning."""
    cache = AnswerCache(str(tmp_path))
    first = probes.yes_no(session(loaded, cache=cache), images, [YES_QUESTION])
    cache.flush()
    [shard] = shard_files(tmp_path)
    document = json.loads(shard.read_text())
    assert len(document["entries"]) == 5 and sorted(document["subjects"]) == sorted(images.content_keys)
    assert document["entries"][0]["fields"]["model"] == "sha256:test-model"
    if tamper == "edited value":
        rewrite_shard(shard, lambda d: d["entries"][0]["value"].update(sums=[0.99, 0.0]) or False)
    elif tamper.startswith("out-of-range"):
        rewrite_shard(shard, lambda d: d["entries"][0]["value"].update(sums=[1.5, 0.0]))
    elif tamper == "planted pickle":
        import pickle

        shard.write_bytes(pickle.dumps({"entries": []}))  # never unpickled
    else:
        shard.write_bytes(shard.read_bytes()[:100])
    counts = CallCounts()
    again_cache = AnswerCache(str(tmp_path))
    again = probes.yes_no(session(loaded, cache=again_cache, counts=counts), images, [YES_QUESTION])
    assert counts.as_dict()["computed"] == 5 and counts.as_dict()["cached"] == 0  # the whole shard, recomputed
    assert again.equals(first)
    warnings = [r.message for r in caplog.records if "refused" in r.message]
    assert len(warnings) == 1 and str(shard) in warnings[0] and reason in warnings[0], warnings
    again_cache.flush()  # the answers are written again, trusted on the next read
    counts = CallCounts()
    probes.yes_no(session(loaded, cache=AnswerCache(str(tmp_path)), counts=counts), images, [YES_QUESTION])
    assert counts.as_dict()["cached"] == 5


def test_sampling_is_the_same_whatever_the_batch_size_and_order(loaded, images):
    pictures = images.load(range(5))
    texts = [render(loaded.processor, "chat", p) for p in ("Describe this person.", "Pretend you are this person and describe yourself.")] * 3
    texts = texts[:5]
    seeds = [sequence_seed(0, images.content_keys[i], texts[i], 0) for i in range(5)]
    batched = GenerativeRunner(loaded, batch_size=5).generate(pictures, texts, seeds, temperature=1.0, max_new_tokens=6)
    single = GenerativeRunner(loaded, batch_size=1).generate(pictures, texts, seeds, temperature=1.0, max_new_tokens=6)
    order = [3, 0, 4, 1, 2]
    shuffled = GenerativeRunner(loaded, batch_size=2).generate(
        [pictures[i] for i in order], [texts[i] for i in order], [seeds[i] for i in order], temperature=1.0, max_new_tokens=6)
    assert single == batched
    assert [shuffled[order.index(i)] for i in range(5)] == batched
    other_seed = GenerativeRunner(loaded, batch_size=5).generate(pictures, texts, [s + 1 for s in seeds], temperature=1.0, max_new_tokens=6)
    assert other_seed != batched  # the seed, not the batch, decides the sample


def test_the_samples_of_one_image_are_preprocessed_once_and_sampled_as_if_alone(loaded, images, monkeypatch):
    """Rows repeating the row before (an image's samples) share one preprocessing, not one sample."""
    pictures = images.load([0, 0, 0, 1, 1, 2])  # 3 samples of image 0, 2 of image 1, 1 of image 2
    text = render(loaded.processor, "chat", "Describe this person.")
    seeds = [sequence_seed(0, images.content_keys[i], text, s) for i, s in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0))]
    runner = GenerativeRunner(loaded, batch_size=6)
    seen = []
    original = runner._inputs
    monkeypatch.setattr(runner, "_inputs", lambda ims, texts, side: seen.append(len(ims)) or original(ims, texts, side))
    together = runner.generate(pictures, [text] * 6, seeds, temperature=1.0, max_new_tokens=6)
    assert seen == [3]  # three distinct (image, text) rows went through the processor
    alone = [GenerativeRunner(loaded, batch_size=1).generate([p], [text], [s], temperature=1.0, max_new_tokens=6)[0]
             for p, s in zip(pictures, seeds)]
    assert together == alone
    assert len({g.text for g in together[:3]}) > 1  # the samples of one image still differ


def test_counter_noise_is_uniform_and_independent_of_the_other_rows():
    u = counter_uniform(torch.tensor([1, 2, 3]), step=4, vocab_size=50_000)
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert float(u.mean()) == pytest.approx(0.5, abs=0.005)
    alone = counter_uniform(torch.tensor([2]), step=4, vocab_size=50_000)
    assert torch.equal(alone[0], u[1])
    assert not torch.equal(counter_uniform(torch.tensor([2]), step=5, vocab_size=50_000)[0], u[1])


def _splitmix64_reference(x: int) -> int:
    """splitmix64's finaliser in Python integers (mod 2**64): the published constants, nothing shared."""
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


@pytest.mark.parametrize("seed", [0, 1, 2**62 + 12345, -1])
def test_counter_noise_is_the_documented_hash_on_the_cpu_and_the_torch_path(seed):
    """U(seed, step, v) = (top 24 bits of splitmix64(splitmix64(seed + step·C) xor v·golden) + 0.5) / 2**24,
    whether computed by the CPU's NumPy path or the int64 torch path a GPU runs."""
    mask = (1 << 64) - 1
    step, vocab = 7, 300
    row = _splitmix64_reference((seed + step * 0x632BE59BD9B4E019) & mask)
    expected = torch.tensor([((_splitmix64_reference(row ^ ((v * 0x9E3779B97F4A7C15) & mask)) >> 40) + 0.5) / 2**24
                             for v in range(vocab)], dtype=torch.float32)
    seeds = torch.tensor([seed], dtype=torch.int64)
    assert torch.equal(counter_uniform(seeds, step, vocab)[0], expected)
    torch_bits = sampling._counter_bits_torch(seeds, step, sampling.token_mix(vocab, "cpu"))
    assert torch.equal(torch_bits.to(torch.float32).add_(0.5).div_(float(1 << 24))[0], expected)


@pytest.mark.parametrize("break_it, words", [
    ("pickle_only", "has only pickle checkpoints"),
    ("python_file", "ships Python code"),
    ("auto_map", "needs custom code"),
])
def test_loading_refuses_pickle_only_and_remote_code_folders(models, tmp_path, break_it, words):
    folder = tmp_path / "vlm"
    shutil.copytree(models["vlm"], folder)
    if break_it == "pickle_only":
        (folder / "model.safetensors").unlink()
        (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    elif break_it == "python_file":
        (folder / "modeling_evil.py").write_text("raise SystemExit('ran remote code')\n")
    else:
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForImageTextToText": "modeling_evil.Evil"}
        (folder / "config.json").write_text(json.dumps(config))
    clear_loaded_models()
    with pytest.raises(UnsafeModelError, match=words):
        load_generative(str(folder), None, "cpu")


def test_the_tiny_models_load_through_the_auto_classes_marked_as_random_weights(models, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoModelForSequenceClassification, AutoProcessor, AutoTokenizer

    from counterfactual_lab.models.identity import is_tiny_model
    from counterfactual_lab.evaluate.auditees.kinds import infer_kind
    from counterfactual_lab.demo.tiny_auditees import build_tiny_auditee_models

    vlm = AutoModelForImageTextToText.from_pretrained(models["vlm"], use_safetensors=True, trust_remote_code=False)
    processor = AutoProcessor.from_pretrained(models["vlm"])
    assert type(vlm).__name__ == "LlavaForConditionalGeneration" and processor.image_token == "<image>"
    assert processor.chat_template and infer_kind(str(models["vlm"])) == "vlm"
    classifier = AutoModelForSequenceClassification.from_pretrained(models["toxicity"], use_safetensors=True)
    AutoTokenizer.from_pretrained(models["toxicity"])
    assert classifier.config.id2label == {0: "non-toxic", 1: "toxic"}
    assert is_tiny_model(str(models["vlm"])) and is_tiny_model(str(models["toxicity"]))
    rebuilt = build_tiny_auditee_models(tmp_path)  # the same seed gives the same weights
    for name in ("vlm", "toxicity"):
        assert (rebuilt[name] / "model.safetensors").read_bytes() == (models[name] / "model.safetensors").read_bytes()


def test_a_captioner_is_audited_through_its_captions(tmp_path):
    from counterfactual_lab.evaluate.auditees import load_auditee
    from counterfactual_lab.evaluate.auditees.kinds import infer_kind
    from counterfactual_lab.demo.tiny_auditees import build_tiny_captioner
    from counterfactual_lab.config.audit_config import AuditSection

    folder = build_tiny_captioner(tmp_path / "blip")
    assert infer_kind(str(folder)) == "captioner"  # BLIP's model type is also a contrastive one: the architecture decides
    rng = np.random.default_rng(0)
    uris = []
    for i in range(3):
        uris.append(str(tmp_path / f"{i}.png"))
        Image.fromarray((rng.random((36, 36, 3)) * 255).astype("uint8")).save(uris[-1])
    pool = pl.DataFrame({"content_key": ["a", "b", "c"], "image_uri": uris})
    answers = []
    for batch_size in (3, 1):
        audit = AuditSection(model=str(folder), generate={"prompts": ["{image}", "a photo of"], "samples": 2, "max_new_tokens": 5},
                                 batch_size=batch_size)
        auditee = load_auditee(audit, "cpu", model_key="sha256:blip")
        assert auditee.kind == "captioner" and auditee.prompt_format == "raw"
        answers.append(auditee.answer(pool, lambda uri: Image.open(uri).convert("RGB")))
    generations = answers[0].generations
    assert generations.height == 3 * 2 * 2 and generations["tokens"].is_between(1, 5).all()
    assert generations["text"].str.len_chars().min() > 0
    assert answers[1].generations.equals(generations)  # the same captions in batches of one
    with pytest.raises(Exception, match="audited through its captions"):
        AuditSection(kind="captioner", model=str(folder), yes_no=["Is this a doctor?"], generate={"prompts": ["{image}"]})


@pytest.mark.s3
def test_the_answer_cache_holds_on_s3_for_any_process(s3_bucket):
    from counterfactual_lab.evaluate.auditees.answer_cache import answer_key

    root = f"s3://{s3_bucket}/out"
    fields = [{"probe": "yes_no", "content_key": f"k{i}", "prompt": "q", "model": "sha256:m"} for i in range(3)]
    keys = [answer_key(f) for f in fields]
    writer = AnswerCache(root, subjects=["k0", "k1", "k2"])
    writer.put_many("yes_no", {k: (f, {"sums": [0.1 * i, 0.2]}) for i, (k, f) in enumerate(zip(keys, fields))})
    shard = writer.flush()
    other = AnswerCache(root, subjects=["k1"])  # another process, another machine: only the store is shared
    found = other.get_many("yes_no", [*keys, "f" * 64])  # unindexed: found by listing the shards
    assert found == {k: {"sums": [0.1 * i, 0.2]} for i, k in enumerate(keys)}
    assert AnswerCache(root).read_index().unindexed == {shard: ("k0", "k1", "k2")}
    import s3fs

    s3fs.S3FileSystem(anon=False).pipe(other.shard_uri(shard).removeprefix("s3://"), b"\x80\x04garbage")
    assert AnswerCache(root, subjects=["k0"]).get_many("yes_no", keys) == {}


def test_the_contrastive_adapter_answers_as_todays_clip_path(tmp_path, images):
    from counterfactual_lab.evaluate.auditees import load_auditee
    from counterfactual_lab.config.audit_config import AuditSection
    from counterfactual_lab.models.clip import ClipEmbedder
    from counterfactual_lab.evaluate.pool import POOL_SCHEMA, predict, retrieval_scores
    from counterfactual_lab.demo.tiny_clip import build_tiny_clip

    clip = str(build_tiny_clip(tmp_path / "clip"))
    rows = [{**{c: None for c in POOL_SCHEMA}, "id": f"i{i}", "source_id": f"s{i}", "variant": "original", "control": False,
             "attribute": "gender", "group": "female", "caption": "a photo of a person", "image_uri": uri, "content_key": key}
            for i, (key, uri) in enumerate(zip(images.content_keys, images.image_uris))]
    pool = pl.DataFrame(rows, schema=POOL_SCHEMA)
    audit = AuditSection(model=clip, queries=["a photo of a doctor"])
    auditee = load_auditee(audit, "cpu")  # kind read from the CLIP config: contrastive
    assert auditee.kind == "contrastive"
    answers = auditee.answer(pool, images.load_image)
    embedder = ClipEmbedder.load(clip, device="cpu")
    assert answers.predictions.equals(predict(pool, audit, embedder, images.load_image))
    assert answers.retrieval.equals(retrieval_scores(pool, audit.queries, embedder, images.load_image))
    assert answers.counts is None and answers.generations.is_empty()


UNCLEAR_QUESTION = "Is this person a doctor? Answer yes, no or unclear."


def test_an_unclear_option_is_read_beside_yes_and_no_and_p_yes_stays_on_the_answers_given(loaded, images):
    """With "unclear" offered, S_u (the first tokens of its spellings) is read from the same
    next-token distribution: unclear = S_u / (S_yes + S_no + S_u), P(yes) = S_yes / (S_yes + S_no)."""
    frame = probes.yes_no(session(loaded), images, [UNCLEAR_QUESTION], unclear="unclear")
    ids = answer_token_ids(loaded.tokenizer, ["yes", "no", "unclear"])
    pictures = images.load(range(5))
    for row in frame.iter_rows(named=True):
        logits, _ = direct_logits(loaded, pictures[images.content_keys.index(row["content_key"])],
                                  render(loaded.processor, "chat", row["prompt"]))
        p = torch.softmax(logits[-1], dim=-1)
        s_yes, s_no, s_u = (float(p[ids[a]].sum()) for a in ("yes", "no", "unclear"))
        assert row["unclear"] == pytest.approx(s_u / (s_yes + s_no + s_u), rel=1e-5)
        assert row["value"] == pytest.approx(s_yes / (s_yes + s_no), rel=1e-5)
        assert row["probabilities"] == pytest.approx([s_yes, s_no, s_u], rel=1e-5)
    assert probes.yes_no(session(loaded), images, [YES_QUESTION])["unclear"].is_null().all()


def test_the_choice_probes_unclear_option_leaves_the_label_scores_on_the_answers_given(loaded, images):
    """Offered as one more option (a prompt without {options}, so the text is the same either way):
    unclear = P(u) of the softmax over the labels and u, and score_<label> = P(label) / (1 − P(u)),
    the softmax over the labels alone."""
    prompt = "What is this person's job: doctor, nurse or unclear?"
    labels = ["doctor", "nurse"]
    offered = probes.choice(session(loaded), images, prompt, labels, unclear="unclear")
    plain = probes.choice(session(loaded), images, prompt, labels + ["unclear"])
    without = probes.choice(session(loaded), images, prompt, labels)
    assert offered["unclear"].to_list() == pytest.approx(plain["score_unclear"].to_list(), rel=1e-9)
    for label in labels:
        assert offered[f"score_{label}"].to_list() == pytest.approx(
            (plain[f"score_{label}"] / (1 - plain["score_unclear"])).to_list(), rel=1e-9)
        assert offered[f"score_{label}"].to_list() == pytest.approx(without[f"score_{label}"].to_list(), rel=1e-9)
    assert set(offered["top1"]) <= set(labels)


def test_sentiment_and_text_embeddings_score_generated_texts_and_are_cached(models, tmp_path):
    from counterfactual_lab.evaluate.auditees.interface import PROBE_SENTIMENT, PROBE_TEXT_EMBEDDING
    from counterfactual_lab.evaluate.auditees.text_models import SentimentScorer, TextEmbedder, sentiment_labels

    sentiment = SentimentScorer.load(str(models["sentiment"]), device="cpu")
    embedder = TextEmbedder.load(str(models["text-embedder"]), device="cpu")
    texts = ["a kind doctor", "a sad nurse", ""]
    with torch.no_grad():
        inputs = sentiment.tokenizer(["a kind doctor"], return_tensors="pt")
        p = torch.softmax(sentiment.model(**inputs).logits[0], dim=-1)
    assert sentiment.score(texts)[0] == pytest.approx(float(p[2] - p[0]), abs=1e-6)  # positive − negative
    vectors = embedder.score(texts)
    assert [float(np.linalg.norm(v)) for v in vectors] == pytest.approx([1.0] * 3, abs=1e-5)
    counts = CallCounts()
    cache = AnswerCache(str(tmp_path), counts=counts)
    first = probes.text_scores(PROBE_TEXT_EMBEDDING, texts, embedder, "sha256:e", cache, counts)
    cache.flush()  # one shard; another process reads it back
    again = probes.text_scores(PROBE_TEXT_EMBEDDING, texts, embedder, "sha256:e", AnswerCache(str(tmp_path)), counts)
    assert again == first and counts.as_dict() == {"computed": 3, "cached": 3, "objects_written": 1}
    assert probes.text_scores(PROBE_SENTIMENT, texts, sentiment, "sha256:s", cache, counts)[1] == pytest.approx(
        float(sentiment.score(["a sad nurse"])[0]), abs=1e-9)
    assert sentiment_labels({0: "NEGATIVE", 1: "POSITIVE"}) == (1, 0)
    with pytest.raises(Exception, match="one label naming 'positive'"):
        sentiment_labels({0: "LABEL_0", 1: "LABEL_1"})


def test_a_probe_naming_the_person_passes_the_prompt_check_and_a_prompt_without_image_still_fails(models):
    """``{person}`` is filled per pair at run time; the preflight check renders it with the neutral
    word (it raised KeyError: 'person', so no generative audit with audit.modalities could start)."""
    from transformers import AutoProcessor

    from counterfactual_lab.errors import ConfigError
    from counterfactual_lab.evaluate.auditees.prompts import check_prompt

    processor = AutoProcessor.from_pretrained(models["vlm"])
    check_prompt(processor, "chat", "Is this {person} a doctor? Answer yes or no.", "audit.yes_no[0]", "vlm")
    with pytest.raises(ConfigError, match="audit.yes_no.0.: .*no place for its image"):
        check_prompt(processor, "raw", "USER: is this {person} a doctor? ASSISTANT:", "audit.yes_no[0]", "vlm")
