"""The Python API: in-memory generation and judging on the tiny models, opening a run, an audit from a dict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

import counterfactual_lab as cfl
from counterfactual_lab.flows.api import run_audit
from counterfactual_lab.errors import ConfigError, UserError
from published_runs import metrics, publish

REPO = Path(__file__).resolve().parents[2]
OPEN = {"text": -1.0, "direction": -1.0, "image": -1.0}  # random-weight judges score at random: let all through


def source_image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8))


def generator(tiny_models, **kwargs) -> cfl.CounterfactualGenerator:
    options = dict(method="img2img", model=str(tiny_models["img2img"]), judge=str(tiny_models["clip"]),
                   device="cpu", steps=2, resolution=32, thresholds=OPEN)
    options.update(kwargs)
    return cfl.CounterfactualGenerator(**options)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_generate_and_judge_one_image_in_memory(tiny_models):
    from counterfactual_lab.models.clip import ClipEmbedder

    image = source_image()
    results = generator(tiny_models).generate(image, "a man working as a doctor", "gender", "female", seeds_per_target=2)
    assert [(r.target_value, r.seed, r.source_value) for r in results] == [("female", 0, "male"), ("female", 1, "male")]
    for r in results:
        assert isinstance(r.image, Image.Image) and r.image.size == (32, 32) and r.image.mode == "RGB"
        assert r.caption == "a woman working as a doctor"
        assert r.explanation == "man → woman" and r.instruction == "make the man a woman"
        assert set(r.scores) == {"text_similarity", "direction_similarity", "image_similarity", "attribute_ok", "attribute_margin"}
        assert r.passed is True and r.drop_reason is None
    assert not np.array_equal(np.asarray(results[0].image), np.asarray(results[1].image)), "seeds give different images"

    # The scores are the judge's formulas on these very images and captions.
    clip = ClipEmbedder.load(str(tiny_models["clip"]), device="cpu")
    r = results[1]
    i0, i1 = clip.embed_images([image.convert("RGB"), r.image])
    t0, t1 = clip.embed_texts(["a man working as a doctor", r.caption])
    assert r.scores["text_similarity"] == pytest.approx(cosine(i1, t1), abs=1e-5)
    assert r.scores["image_similarity"] == pytest.approx(cosine(i0, i1), abs=1e-5)
    assert r.scores["direction_similarity"] == pytest.approx(cosine(i1 - i0, t1 - t0), abs=1e-5)

    # Deterministic: the same call gives the same pixels; a strict judge drops with the reason.
    strict = generator(tiny_models, thresholds={"text": 1.0})  # no image is its caption exactly
    again = strict.generate(image, "a man working as a doctor", "gender", ["female"], seeds_per_target=2)
    assert [np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(results, again)] == [True, True]
    assert [(a.passed, a.drop_reason) for a in again] == [(False, "below_text_threshold")] * 2


def test_default_targets_and_no_judge(tiny_models):
    unjudged = generator(tiny_models, judge=None)
    results = unjudged.generate(source_image(1), "an old woman reading", "age")
    assert [r.target_value for r in results] == ["child", "young", "middle-aged"], "every other age value, the source's skipped"
    assert results[1].caption == "a young woman reading"
    assert all(r.scores == {} and r.passed is None for r in results)
    html = results[1]._repr_html_()
    assert html.count("data:image/webp;base64,") == 2 and "a young woman reading" in html and "not judged" in html


def test_bad_arguments_are_one_line_errors(tiny_models):
    with pytest.raises(ConfigError, match="method"):
        cfl.CounterfactualGenerator(method="dreambooth")
    with pytest.raises(UserError, match=r"generation.params.strenght is not understood by method 'img2img' \(did you mean 'strength'\?\)"):
        cfl.CounterfactualGenerator(params={"strenght": 0.5})
    with pytest.raises(UserError, match="needs a PIL image, got str"):
        generator(tiny_models).generate("photo.png", "a man", "gender")
    with pytest.raises(UserError, match="attribute 'hair' has no vocabulary: pass targets"):
        generator(tiny_models).generate(source_image(), "a man", "hair")


@pytest.mark.slow
def test_in_memory_generation_needs_no_prefect(tiny_models):
    """The in-memory API never imports Prefect (checked in a fresh interpreter: the test session has it loaded)."""
    code = f"""
import sys, numpy as np
from PIL import Image
import counterfactual_lab as cfl
g = cfl.CounterfactualGenerator(model={str(tiny_models['img2img'])!r}, judge={str(tiny_models['clip'])!r},
                                device="cpu", steps=2, resolution=32)
out = g.generate(Image.new("RGB", (32, 32), "grey"), "a man", "gender", "female")
assert len(out) == 1 and out[0].scores
print(sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "flows", "tasks", "ray")))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --- opening a run -------------------------------------------------------------------------------


class Visible(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links.append(dict(attrs)["href"])

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


def visible(html: str) -> Visible:
    parser = Visible()
    parser.feed(html)
    return parser


def test_open_run_gives_polars_tables_and_a_jupyter_summary(tmp_path):
    run = cfl.open_run(publish(str(tmp_path)).run_uri)
    assert isinstance(run, cfl.AuditRun) and run.run_id == "run-7" and run.status == "complete"
    assert isinstance(run.metrics, pl.DataFrame) and run.metrics.height == metrics().height
    assert run.predictions["top1"].to_list() == ["doctor"]
    assert run.quarantine.height == 2 and run.counterfactuals.height == 1
    assert run.report_uri == str(tmp_path / "run-7" / "report.html")
    # Called findings first: the flip rate whose interval lies above its control's.
    assert run.findings()[0].startswith("gender male→female: the top-1 label flips in 25% of pairs [10%, 40%]")
    assert "above the control's 5% [1%, 8%]" in run.findings()[0]
    assert run.headline().startswith("run run-7")
    assert "run_id='run-7'" in repr(run)

    page = visible(run._repr_html_())
    text = " ".join(page.text)
    assert page.text[0].startswith("Models: audit tiny-clip (revision r2)") and "mean nothing" in page.text[0]
    assert "Run run-7" in text and "dataset sample" in text and "finished 2025-01-01T12:05:00" in text
    assert "Rows: 12 in = 10 valid + 2 quarantined." in page.text
    assert run.findings()[0] in page.text and "Run verdict: finding (some difference is called); 1 difference(s) called." in text
    assert page.links == [(tmp_path / "run-7" / "report.html").as_uri()]


def test_open_run_of_a_generative_run_exposes_its_probes_and_generations(tmp_path):
    from published_runs import generations, probes, publish_generative

    run = cfl.open_run(publish_generative(str(tmp_path)).run_uri)
    assert run.probes.drop("run_id", "dataset").equals(probes())
    assert run.generations["text"].to_list() == generations()["text"].to_list()
    assert run.findings()[0].startswith("changing gender: P(yes) for 'Is this person a doctor? Answer yes or no.' moves by 0.4")
    text = " ".join(visible(run._repr_html_()).text)
    assert ".probes (2 rows)" in text and ".generations (2 rows)" in text
    # A run without a generative model: empty frames, nothing said about them.
    contrastive = cfl.open_run(publish(str(tmp_path)).run_uri)
    assert contrastive.probes.is_empty() and contrastive.generations.is_empty()
    assert ".probes" not in " ".join(visible(contrastive._repr_html_()).text)


def test_the_summary_puts_called_findings_first_where_controls_exist(tmp_path, monkeypatch):
    """With ``assess_findings`` (the control comparison), called findings lead, with a count."""
    from counterfactual_lab import api as findings  # where the API looks assess_findings up

    def assess_findings(metrics: pl.DataFrame) -> pl.DataFrame:  # the contract's shape, by hand
        return pl.DataFrame({
            "metric": ["flip_rate", "flip_rate"], "called": [False, True],
            "sentence": ["gender female→male: within the control", "gender male→female: beyond the control"],
        })

    monkeypatch.setattr(findings, "assess_findings", assess_findings, raising=False)
    run = cfl.open_run(publish(str(tmp_path)).run_uri)
    assert run.findings() == ["gender male→female: beyond the control", "gender female→male: within the control"]
    assert "1 of 2 called" in run._repr_html_()


def test_open_run_refuses_an_incomplete_run(tmp_path):
    publisher = publish(str(tmp_path))
    (Path(publisher.run_uri) / "manifest.json").unlink()
    with pytest.raises(UserError, match="incomplete: no manifest.json"):
        cfl.open_run(publisher.run_uri)


@pytest.mark.s3
def test_open_run_on_s3(s3_bucket):
    run = cfl.open_run(publish(f"s3://{s3_bucket}/out").run_uri)
    assert run.metrics.height == metrics().height
    html = run._repr_html_()
    assert f"s3://{s3_bucket}/out/run-7/report.html" in html and "<a " not in html  # no file link for S3


# --- an audit from a dict ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.prefect
def test_run_audit_from_a_dict(prefect_server, tiny_models, tmp_path_factory, tmp_path, monkeypatch):
    from counterfactual_lab.demo.inputs import demo_config
    from audit_runs import audit_home

    inputs = audit_home(tmp_path_factory, tiny_models)
    config = demo_config(inputs.dataset_dir, inputs.models, "api-out")  # a relative output: resolves in the cwd
    config["attributes"] = {"gender": ["female", "male"]}
    config["generation"].update(steps=2, seeds_per_target=1, batch_size=8)
    config["audit"]["bootstrap_samples"] = 50
    monkeypatch.chdir(tmp_path)

    run = run_audit(config)
    assert Path(run.run_uri).parent == tmp_path / "api-out"
    assert run.status == "complete" and run.manifest["config"]["audit"]["bootstrap_samples"] == 50
    assert isinstance(run.metrics, pl.DataFrame) and "flip_rate" in run.metrics["metric"].to_list()
    # 8 rows, one seed: a reconstruction and a counterfactual each, plus a control each.
    assert run.predictions.height and run.counterfactuals.height == 8 * 3
    assert Path(run.report_uri).is_file()
    assert run_audit(config).run_id == run.run_id, "the same dict is the same run"

    config["generation"]["strenght"] = 0.5
    with pytest.raises(ConfigError, match="config dict is invalid: .*strenght"):
        run_audit(config)
    assert json.loads((Path(run.run_uri) / "manifest.json").read_text())["run_id"] == run.run_id
