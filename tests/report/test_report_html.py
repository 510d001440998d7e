"""The HTML report and the plain-words findings, on hand-made frames and small PIL images."""

from __future__ import annotations

import base64
import io
import json
import math
from html.parser import HTMLParser

import polars as pl
import pytest
from PIL import Image

from counterfactual_lab.report.sentences import percent
from counterfactual_lab.report.markdown import summary_markdown
from counterfactual_lab.report.findings import headline_findings, headline_table, table_cells
from counterfactual_lab.report.html import image_loader, render_report
from counterfactual_lab.report.examples import select_examples
from counterfactual_lab.report.charts import Bar, bar_chart_svg
from counterfactual_lab.report.sentences import number

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
EVIL_CAPTION = '<script>alert("caption")</script> a doctor'


class StrictParser(HTMLParser):
    """Parses the report and fails on any unbalanced tag; collects images, links and body text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.img_src: list[str] = []
        self.links: list[str] = []
        self.body_text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.img_src.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        for key in ("src", "href"):
            if key in dict(attrs):
                self.links.append(dict(attrs)[key])

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data):
        if "body" in self.stack and "style" not in self.stack and data.strip():
            self.body_text.append(data.strip())


def parse(html: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(html)
    parser.close()
    assert parser.errors == [], parser.errors
    assert parser.stack == [], f"unclosed tags: {parser.stack}"
    return parser


def metrics_frame() -> pl.DataFrame:
    q, nurse_q = "a photo of a doctor", "a photo of a <b>nurse</b>"
    rows = [
        # metric, stratum, attribute, group, label, query, value, ci_low, ci_high, n, n_sources, note
        ("flip_rate", "generated", "gender", "male→female", None, None, 0.23, 0.19, 0.27, 120, 60, None),
        ("flip_rate", "generated", "gender", "female→male", None, None, 0.05, 0.02, 0.09, 110, 55, None),
        ("flip_rate", "generated", "age", "young→old", None, None, 0.40, 0.30, 0.50, 60, 30, None),
        ("control_flip_rate", "generated", "gender", None, None, None, 0.06, 0.03, 0.10, 115, 115, None),
        ("control_flip_rate", "generated", "age", None, None, None, 0.10, 0.05, 0.16, 30, 30, None),
        ("demographic_parity_difference", "generated", "gender", None, "doctor", None, 0.12, 0.05, 0.20, 230, 115, None),
        ("demographic_parity_ratio", "generated", "gender", None, "doctor", None, 0.8, 0.7, 0.9, 230, 115, None),
        ("prob_gap_abs", "generated", "gender", "male→female", "doctor", None, 0.08, 0.06, 0.10, 120, 60, None),
        ("prob_gap_signed", "generated", "gender", "male→female", "doctor", None, -0.08, -0.10, -0.06, 120, 60, None),
        ("control_prob_gap_abs", "generated", "gender", None, "doctor", None, 0.03, 0.02, 0.04, 115, 115, None),
        ("control_prob_gap_signed", "generated", "gender", None, "doctor", None, 0.0, -0.01, 0.01, 115, 115, None),
        ("skew@10", "generated", "gender", "male", None, q, 0.41, 0.2, 0.6, 230, 115, None),
        ("skew@10", "generated", "gender", "female", None, q, None, None, None, 230, 115,
         "female is absent from the top 10 (0 of 10): skew is −∞"),
        ("max_skew@10", "generated", "gender", "male", None, q, 0.41, 0.2, 0.6, 230, 115, None),
        ("min_skew@10", "generated", "gender", "female", None, q, -0.69, -0.9, -0.4, 230, 115, None),
        ("ndkl@10", "generated", "gender", None, None, q, 0.12, None, None, 230, 115, None),
        ("max_skew@10", "generated", "gender", None, None, nurse_q, 0.1, 0.0, 0.2, 230, 115, None),
        ("cits", "generated", "gender", None, None, None, 0.62, 0.6, 0.64, 120, 60, None),
        ("demographic_parity_difference", "observational", "gender", None, "doctor", None, 0.3, 0.1, 0.5, 48, 48, None),
    ]
    return pl.DataFrame(
        [(*r[:11], None, r[11]) for r in rows],
        schema={
            "metric": pl.String, "stratum": pl.String, "attribute": pl.String, "group": pl.String, "label": pl.String,
            "query": pl.String, "value": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64,
            "n_sources": pl.Int64, "skipped_resamples": pl.Int64, "note": pl.String,
        },
        orient="row",
    )


def manifest(tiny: bool = True) -> dict:
    return {
        "run_id": "run-1",
        "tiny_models": tiny,
        "dataset": {"name": "sample", "uri": "/data/sample", "fingerprint": "abc123"},
        "models": {
            "generator": {"model": "./.cflab/models/img2img", "revision": None},
            "judge": {"model": "openai/clip-vit-base-patch32", "revision": "3d74acf"},
            "audit": {"model": "google/siglip-base-patch16-224", "revision": None},
        },
        "row_accounting": {"rows_in": 10, "valid": 9, "quarantined": 1, "planned": 5, "kept": 3, "dropped": 1, "failed": 1},
        "generation_counts": {"generated": 4, "cached": 1},
        "cache_hits": 1,
        "tables": {"metrics": "/out/run-1/metrics.parquet"},
        "config": {"audit": {"labels": ["doctor", "nurse"]}},
        "versions": {"python": "3.12", "torch": "2.x"},
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five small PNGs on disk, each a different colour; maps a URI to its path."""
    root = tmp_path_factory.mktemp("images")
    uris = {}
    for i, colour in enumerate(["red", "green", "blue", "yellow", "purple"]):
        path = root / f"img{i}.png"
        Image.new("RGB", (64 + i, 48), colour).save(path)
        uris[f"file://{path}"] = path
    big = root / "big.png"
    Image.new("RGB", (900, 600), "orange").save(big)
    uris[f"file://{big}"] = big
    return uris


def load_from(images):
    def load(uri: str) -> Image.Image:
        return Image.open(images[uri]).convert("RGB")

    return load


def frames(images):
    u = sorted(k for k in images if "img" in k)
    big = next(k for k in images if "big" in k)
    counterfactuals = pl.DataFrame(
        {
            "source_id": ["s1", "s1", "s2", "s3", "s4"],
            "attribute": ["gender", "gender", "gender", "age", "gender"],
            "source_value": ["male", "male", "female", "young", "male"],
            "target_value": ["female", "female", "male", "old", "female"],
            "method": ["img2img"] * 5,
            "seed": [0, 1, 0, 0, 0],
            "caption": [EVIL_CAPTION, EVIL_CAPTION, "a nurse", "a child", "a man"],
            "counterfactual_caption": ["a woman doctor", "a woman doctor", "a man nurse", "an old person", "a woman"],
            "explanation": ["man→woman", "man→woman", "woman→man", "child→old person", "man→woman"],
            "image_uri": [u[1], u[2], big, u[3], None],
            "source_image_uri": [u[0], u[0], u[4], u[4], u[0]],
            "text_similarity": [0.31, 0.30, 0.28, 0.1, None],
            "direction_similarity": [0.25, 0.24, 0.22, 0.05, None],
            "image_similarity": [0.8, 0.79, 0.82, 0.6, None],
            "attribute_ok": [True, True, True, False, None],
            "kept": [True, True, True, False, False],
            "drop_reason": [None, None, None, "attribute check failed", None],
            "status": ["kept", "kept", "kept", "dropped", "failed"],
            "error": [None, None, None, None, "CUDA out of memory"],
        }
    )
    predictions = pl.DataFrame(
        {
            "id": ["s1", "s2", "s3", "c1", "c2", "c3"],
            "source_id": ["s1", "s2", "s3", "s1", "s1", "s2"],
            "variant": ["original"] * 3 + ["counterfactual"] * 3,
            "attribute": [None, None, None, "gender", "gender", "gender"],
            "group": ["male", "female", "young", "female", "female", "male"],
            "score_doctor": [0.7, 0.4, 0.5, 0.6, 0.3, 0.45],
            "score_nurse": [0.3, 0.6, 0.5, 0.4, 0.7, 0.55],
            "top1": ["doctor", "nurse", "doctor", "doctor", "nurse", "nurse"],
            "caption_similarity": [0.3] * 6,
            "image_uri": [u[0], u[4], u[4], u[1], u[2], big],
        }
    )
    quarantine = pl.DataFrame(
        {"id": ["q1"], "reason": ["undecodable image"], "detail": ['"><img src=x onerror=alert(1)>']}
    )
    return counterfactuals, predictions, quarantine


def render(images, tiny=True, max_examples=24, metrics=None):
    counterfactuals, predictions, quarantine = frames(images)
    return render_report(
        manifest=manifest(tiny),
        metrics=metrics_frame() if metrics is None else metrics,
        counterfactuals=counterfactuals,
        predictions=predictions,
        load_image=load_from(images),
        max_examples=max_examples,
        quarantine=quarantine,
    )


def test_report_parses_and_inlines_every_shown_image(images):
    html = render(images)
    parsed = parse(html)
    # 3 kept pairs + 1 dropped pair (the failed row has no image): 2 images each.
    assert len(parsed.img_src) == 8
    assert all(src.startswith("data:image/png;base64,") for src in parsed.img_src)
    decoded = Image.open(io.BytesIO(base64.b64decode(parsed.img_src[0].split(",", 1)[1])))
    assert decoded.format == "PNG"
    sizes = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).size for s in parsed.img_src]
    assert max(max(size) for size in sizes) <= 256, "large images are shrunk to thumbnails"
    assert (64, 48) in sizes, "small images keep their size"


def test_report_is_self_contained(images):
    parsed = parse(render(images))
    assert "script" not in parsed.tags
    external = [link for link in parsed.links if not link.startswith("data:")]
    assert external == []


def test_first_visible_line_names_models_and_warns_for_tiny_models(images):
    first = parse(render(images, tiny=True)).body_text[0]
    assert "openai/clip-vit-base-patch32" in first and "revision 3d74acf" in first
    assert "google/siglip-base-patch16-224" in first
    assert "tiny random-weight" in first and "mean nothing" in first
    real = parse(render(images, tiny=False)).body_text
    assert "google/siglip-base-patch16-224" in real[0]
    assert not any("mean nothing" in text for text in real)


def test_dataset_text_is_escaped(images):
    html = render(images)
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&quot;caption&quot;)&lt;/script&gt;" in html
    assert "<img src=x" not in html
    assert "&lt;b&gt;nurse&lt;/b&gt;" in html, "retrieval queries are escaped too"
    assert "<b>nurse</b>" not in html


def test_findings_charts_and_skew_plots_are_drawn(images):
    html = render(images)
    parsed = parse(html)
    assert ("gender male→female: the top-1 label flips in 23% of pairs [19%, 27%] (n=120 pairs from 60 source images), "
            "above the control&#x27;s 6% [3%, 10%]" in html)
    assert "4 difference(s) called." in html
    # Each comparison sits beside its control in the findings table, with its verdict.
    assert "<td>23% [19%, 27%]</td><td>control 6% [3%, 10%]</td><td><span class=\"flip\">called</span></td>" in html
    assert ("<td>5% [2%, 9%]</td><td>control 6% [3%, 10%]</td><td>no difference detected (not above the control)</td>"
            in html)
    assert 'id="run-verdict"' in html and "Run verdict: finding" in html
    assert "Observational (originals only, descriptive): across gender groups" in html
    # One SVG per bar-chart kind present (flip, abs gap, signed gap, DP diff, DP ratio, CITS) + one per query.
    assert parsed.tags.count("svg") == 6 + 2
    assert "gender · control (another seed)" in html
    assert "gender · doctor [observational]" in html
    assert "Query: a photo of a doctor" in html
    assert "gender Skew@10 (female)" in html and "gender MaxSkew@10 (male)" in html
    # Whiskers: one path per drawn bar with an interval (every row but NDKL@10 and the absent skew).
    with_interval = metrics_frame().filter(pl.col("ci_low").is_not_null() & ~pl.col("metric").is_in(["equalized_odds_difference"]))
    assert parsed.tags.count("path") == with_interval.height


def with_rankings(metrics: pl.DataFrame) -> pl.DataFrame:
    """``metrics`` with the ranking columns a run writes on its skew and NDKL rows; one averaged
    MaxSkew row of the socialcounterfactuals protocol (query null)."""
    ranking = pl.col("metric").str.contains("skew|ndkl")
    framed = metrics.with_columns(
        pl.when(ranking).then(pl.lit("geyik")).alias("protocol"), pl.when(ranking).then(pl.lit(10)).alias("k"),
        pl.when(ranking).then(pl.lit("uniform: female=0.5, male=0.5")).alias("desired"))
    mean = framed.filter(pl.col("metric") == "max_skew@10").head(1).with_columns(
        pl.lit("max_skew@2").alias("metric"), pl.lit(None, dtype=pl.String).alias("query"),
        pl.lit(None, dtype=pl.String).alias("group"), pl.lit("socialcounterfactuals").alias("protocol"),
        pl.lit(2).alias("k"), pl.lit("pool: each query's own mix").alias("desired"), pl.lit(0.37).alias("value"))
    return pl.concat([framed, mean])


def test_every_skew_and_ndkl_number_says_its_k_desired_distribution_and_protocol(images):
    metrics = with_rankings(metrics_frame())
    findings = headline_findings(metrics, max_items=40)
    basis = "K = 10, desired uniform: female=0.5, male=0.5, geyik protocol"
    ranking_sentences = [f for f in findings if any(w in f for w in ("Skew", "skew@", "NDKL"))]
    assert len(ranking_sentences) == metrics.filter(pl.col("metric").str.contains("skew|ndkl")).height
    assert all(basis in f or "socialcounterfactuals protocol" in f for f in ranking_sentences), ranking_sentences
    ndkl = with_rankings(metrics_frame().vstack(metrics_frame().filter(pl.col("metric") == "ndkl@10").with_columns(
        pl.lit("ndkl").alias("metric"))))
    assert "N = 10, desired uniform" in next(f for f in headline_findings(ndkl, max_items=40) if "whole ranking" in f)
    assert ("averaged over the queries, each ranking its own sets, the gender MaxSkew of the top 2 is 0.37 [0.2, 0.6] "
            "(n=230 images from 115 source images; K = 2, desired pool: each query's own mix, socialcounterfactuals "
            "protocol)") in findings
    cells = [r for r in headline_table(metrics) if r["metric"] == "max_skew@10" and r["query"] == "a photo of a doctor"]
    assert table_cells(cells[0])["value"] == "0.41 (K=10, uniform: female=0.5, male=0.5, geyik)"
    html = render(images, metrics=metrics)
    parse(html)
    assert "gender: K = 10, desired uniform: female=0.5, male=0.5, geyik protocol" in html
    assert "Averaged over the queries (each ranking its own sets)" in html


def test_examples_show_flips_first_and_respect_max_examples(images):
    counterfactuals, predictions, _ = frames(images)
    kept, dropped = select_examples(counterfactuals, predictions, max_examples=24)
    assert [p.row["seed"] for p in kept if p.row["source_id"] == "s1"] == [1, 0]
    assert kept[0].flipped and kept[0].original_top1 == "doctor" and kept[0].counterfactual_top1 == "nurse"
    assert [p.row["source_id"] for p in dropped] == ["s3"]
    kept, dropped = select_examples(counterfactuals, predictions, max_examples=2)
    assert len(kept) + len(dropped) == 2
    html = render(images, max_examples=1)
    assert len(parse(html).img_src) == 2
    assert "(flipped)" in html


def test_image_loader_reads_stored_images(images):
    uri = next(k for k in images if "img0" in k)
    load = image_loader()
    assert load(str(images[uri])).size == (64, 48)
    assert load(uri).getpixel((0, 0)) == (255, 0, 0)


def test_missing_image_becomes_a_placeholder(images):
    counterfactuals, predictions, _ = frames(images)
    counterfactuals = counterfactuals.with_columns(
        pl.when(pl.col("seed") == 1).then(pl.lit("file:///nowhere/gone.png")).otherwise(pl.col("image_uri")).alias("image_uri")
    )

    def load(uri):
        if uri not in images:
            raise FileNotFoundError(uri)
        return Image.open(images[uri])

    html = render_report(
        manifest=manifest(), metrics=metrics_frame(), counterfactuals=counterfactuals,
        predictions=predictions, load_image=load,
    )
    parsed = parse(html)
    assert len(parsed.img_src) == 7
    assert "counterfactual unavailable: file:///nowhere/gone.png" in html


def test_accounting_and_quarantine_summary(images):
    html = render(images)
    assert "Accounting closes" in html
    assert "undecodable image" in html
    bad = manifest()
    bad["row_accounting"]["valid"] = 7
    counterfactuals, predictions, _ = frames(images)
    html = render_report(
        manifest=bad, metrics=metrics_frame(), counterfactuals=counterfactuals,
        predictions=predictions, load_image=load_from(images),
    )
    assert "Accounting does not close: rows in (10) != valid (7) + quarantined (1) = 8" in html


def test_report_renders_for_an_empty_run(images):
    html = render_report(
        manifest={"run_id": "empty", "tiny_models": False, "models": {}},
        metrics=pl.DataFrame(), counterfactuals=pl.DataFrame(), predictions=pl.DataFrame(),
        load_image=load_from(images),
    )
    parsed = parse(html)
    assert parsed.img_src == []
    assert "No metrics were computed" in html


# --- findings -----------------------------------------------------------------------------


def test_findings_sentences_in_plain_words():
    findings = headline_findings(metrics_frame(), max_items=30)
    assert findings[0] == (
        "age young→old: the top-1 label flips in 40% of pairs [30%, 50%] (n=60 pairs from 30 source images), "
        "above the control's 10% [5%, 16%] (same source and value, another seed; n=30 pairs); at the configured level: "
        "[30%, 50%] vs the control's [5%, 16%], at least audit.min_effect = 0.01 more")
    assert (
        "gender male→female: P('doctor') changes by -0.08 on average [-0.1, -0.06] (n=120 pairs from 60 source "
        "images); at the configured level, its interval [-0.1, -0.06] excludes no change, and the change is at least "
        "audit.min_effect = 0.01. The control: the control's +0 [-0.01, 0.01] (same source and value, another seed; "
        "n=115 pairs)"
    ) in findings
    assert (
        "across gender groups, the share labelled 'doctor' differs by up to 12 percentage points "
        "(demographic parity difference 0.12 [0.05, 0.2], n=230 images from 115 source images)"
    ) in findings
    min_skew = next(f for f in findings if "MinSkew" in f)
    assert f"{math.exp(-0.69):.3g}× its desired share" in min_skew and "top 10" in min_skew
    assert "gender skew@10 female for 'a photo of a doctor' is undefined: female is absent from the top 10" in " ".join(findings)
    assert "most over-represented gender group (male)" in next(f for f in findings if "MaxSkew" in f)
    ndkl = next(f for f in findings if "NDKL" in f)
    assert "[" not in ndkl, "no interval is printed when the row has none"
    assert len(findings) == metrics_frame().filter(~pl.col("metric").str.starts_with("control_")).height


def test_findings_put_called_ones_first_one_per_kind_and_attribute():
    findings = headline_findings(metrics_frame(), max_items=5)
    assert findings[0].startswith("age young→old: the top-1 label flips")
    assert findings[1].startswith("gender male→female: the top-1 label flips"), "the larger gender flip rate comes first"
    assert "above the control's 0.03" in findings[2] and "moves by 0.08" in findings[2]
    assert "excludes no change, and the change is at least audit.min_effect = 0.01" in findings[3]
    assert findings[4].startswith("gender female→male: no difference detected at this sample size (n=110 pairs")
    assert headline_findings(metrics_frame(), max_items=0) == []


def test_findings_of_undefined_rows_say_why():
    frame = metrics_frame().with_columns(
        pl.when(pl.col("metric") == "flip_rate").then(None).otherwise(pl.col("value")).alias("value"),
        pl.when(pl.col("metric") == "flip_rate").then(pl.lit("no pairs")).otherwise(pl.col("note")).alias("note"),
    )
    findings = headline_findings(frame, max_items=30)
    assert not any("flips in" in f for f in findings)
    assert "age young→old: flip_rate is undefined (no pairs)" in findings


def test_headline_table_is_json_safe_and_summary_links_the_report():
    frame = metrics_frame().with_columns(pl.lit(float("nan")).alias("ci_low"))
    table = headline_table(frame)
    assert table[0]["metric"] == "flip_rate" and table[0]["ci_low"] is None
    json.dumps(table, allow_nan=False)
    text = summary_markdown(manifest(), metrics_frame(), "s3://bucket/out/run-1/report.html")
    assert text.splitlines()[0] == "# Counterfactual audit run-1"
    assert "mean nothing" in text
    assert "[Open the full report](s3://bucket/out/run-1/report.html)" in text
    assert "4 difference(s) called" in text
    assert "- age young→old: the top-1 label flips in 40% of pairs [30%, 50%] (n=60 pairs from 30 source images), above" in text
    assert "| flip_rate | generated | age | young→old |  |  | 0.4 | [0.3, 0.5] | 0.1 [0.05, 0.16] | yes | 60 |" in text



def test_examples_compare_each_counterfactual_with_its_sets_reconstruction(images):
    """With reconstructions the reference is the reconstruction of the same set, not the original."""
    u = sorted(k for k in images if "img" in k)
    base = {"source_id": "s1", "attribute": "gender", "source_value": "male", "method": "img2img",
            "caption": "a man", "source_image_uri": u[0], "kept": True, "drop_reason": None, "status": "generated"}
    counterfactuals = pl.DataFrame(
        [
            {**base, "variant": "reconstruction", "control": False, "target_value": "male", "seed": 0, "set_id": "A",
             "counterfactual_caption": "a man", "image_uri": u[1]},
            {**base, "variant": "counterfactual", "control": False, "target_value": "female", "seed": 0, "set_id": "A",
             "counterfactual_caption": "a woman", "image_uri": u[2]},
            {**base, "variant": "reconstruction", "control": False, "target_value": "male", "seed": 1, "set_id": "B",
             "counterfactual_caption": "a man", "image_uri": u[3]},
            {**base, "variant": "counterfactual", "control": False, "target_value": "female", "seed": 1, "set_id": "B",
             "counterfactual_caption": "a woman", "image_uri": u[4]},
            {**base, "variant": "reconstruction", "control": True, "target_value": "male", "seed": 2, "set_id": "C",
             "counterfactual_caption": "a man", "image_uri": u[4]},
        ]
    )
    predictions = pl.DataFrame(
        {
            "source_id": ["s1"] * 5,
            "variant": ["original", "reconstruction", "counterfactual", "reconstruction", "counterfactual"],
            "image_uri": [u[0], u[1], u[2], u[3], u[4]],
            # The original says doctor; set A's reconstruction already says nurse (no flip within
            # the set), set B's says doctor and its counterfactual nurse (a flip).
            "top1": ["doctor", "nurse", "nurse", "doctor", "nurse"],
        }
    )
    kept, dropped = select_examples(counterfactuals, predictions, max_examples=24)
    assert dropped == [] and [p.row["set_id"] for p in kept] == ["B", "A"]  # counterfactuals only, flips first
    flipped, same = kept
    assert (flipped.reconstruction_uri, flipped.reference_top1, flipped.counterfactual_top1) == (u[3], "doctor", "nurse")
    assert flipped.flipped and not same.flipped and same.original_top1 == "doctor"
    html = render_report(
        manifest=manifest(), metrics=metrics_frame(), counterfactuals=counterfactuals, predictions=predictions,
        load_image=load_from(images),
    )
    assert len(parse(html).img_src) == 2 * 3  # original, reconstruction, counterfactual
    assert "reconstruction: doctor → counterfactual: nurse (flipped)" in html
    assert "reconstruction: nurse → counterfactual: nurse (original: doctor)" in html
    assert "compared with the <b>reconstruction</b> of its set" in html


def test_examples_without_reconstructions_say_the_comparison_is_real_vs_generated(images):
    html = render(images)
    assert "compared with the <b>real original</b>" in html and "generated vs real" in html
    assert "original: doctor → counterfactual: nurse (flipped)" in html


# --- charts: sizes, zeros, undefined values ---------------------------------------------------


def test_estimated_width(text: str, font_px: float = 11.0) -> float:
    """A width estimate of our own, independent of the report's: 0.62 em per ASCII character
    (Arial, Segoe UI and Roboto draw digits and lower case at 0.50–0.56 em), 0.35 em for the
    narrow ones, 1 em for anything else (arrows, middle dots, accents)."""
    return font_px * sum(0.35 if ch in "iljI.,:;'!| " else 0.62 if ch.isascii() else 1.0 for ch in text)


test_estimated_width.__test__ = False  # a helper, not a test


class SvgTexts(HTMLParser):
    """Every <svg>'s viewBox and the anchor, position and visible text of each of its <text>s."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.charts: list[dict] = []
        self._text: dict | None = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg":
            _, _, w, h = (float(v) for v in attrs["viewbox"].split())  # HTMLParser lower-cases attribute names
            self.charts.append({"width": w, "height": h, "class": attrs.get("class"), "texts": []})
        elif tag == "text":
            self._text = {"x": float(attrs["x"]), "y": float(attrs["y"]), "anchor": attrs.get("text-anchor", "start"), "s": ""}
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "text" and self._text is not None:
            self.charts[-1]["texts"].append(self._text)
            self._text = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._text is not None and not self._in_title:
            self._text["s"] += data


def svg_charts(html: str) -> list[dict]:
    parser = SvgTexts()
    parser.feed(html)
    return parser.charts


def assert_texts_fit(chart: dict) -> None:
    for text in chart["texts"]:
        width = test_estimated_width(text["s"])
        left = {"start": text["x"], "middle": text["x"] - width / 2, "end": text["x"] - width}[text["anchor"]]
        assert left >= 0 and left + width <= chart["width"], (
            f"{text['s']!r} spans [{left:.0f}, {left + width:.0f}] px, outside the viewBox width {chart['width']:.0f}"
        )
        assert text["y"] - 11 >= 0 and text["y"] + 3 <= chart["height"], f"{text['s']!r} is cut at the top or bottom"


def wide_metrics() -> pl.DataFrame:
    """The issue's cases: long labels and intervals ("n=28" clipped to "n=2"), an all-zero chart,
    and a parity ratio undefined for most groups (6 of 8 rows used to vanish)."""
    schema = {"metric": pl.String, "attribute": pl.String, "group": pl.String, "label": pl.String, "query": pl.String,
              "value": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64, "note": pl.String}
    rows = [
        ("flip_rate", "race", "Middle Eastern→Latino", None, None, 0.123456, 0.0456, 0.2345, 28, None),
        ("flip_rate", "gender", "non-binary→female", None, None, 0.5, 0.25, 0.75, 1234567, None),
        ("prob_gap_abs", "age", "middle-aged→elderly", "a very long label name for a profession", None,
         0.0123, 0.00456, 0.0234, 28, None),
        ("equalized_odds_difference", "gender", None, "doctor", None, 0.0, 0.0, 0.0, 28, None),
        ("equalized_odds_difference", "age", None, "doctor", None, 0.0, 0.0, 0.0, 40, None),
    ]
    rows += [("demographic_parity_ratio", "gender", None, label, None, 0.8, 0.7, 0.9, 28, None) for label in ("doctor", "nurse")]
    rows += [
        ("demographic_parity_ratio", "age", None, label, None, None, None, None, 28,
         f"no group predicted '{label}' (0 / 0): the ratio is undefined")
        for label in ("doctor", "nurse", "teacher", "engineer", "pilot", "chef")
    ]
    rows += [("max_skew@10", "gender", "male", None, "a photo of a doctor at work in a hospital", 0.41, 0.2, 0.6, 10, None)]
    return pl.DataFrame(rows, schema=schema, orient="row")


def test_report_svg_text_fits_its_viewbox(images):
    for metrics in (metrics_frame(), wide_metrics()):
        charts = svg_charts(render(images, metrics=metrics))
        assert charts
        for chart in charts:
            assert_texts_fit(chart)
    texts = [t["s"] for chart in svg_charts(render(images, metrics=wide_metrics())) for t in chart["texts"]]
    assert "12% [4.6%, 23%] n=28" in texts, "the whole value text is drawn, n=28 and all"
    assert "50% [25%, 75%] n=1234567" in texts


def test_bar_chart_keeps_every_text_inside_for_extreme_labels_and_values():
    bars = [
        Bar("W" * 80, 123456.789, -98765.4321, 234567.891, 10**9),
        Bar("→·é" * 30, None, note="x" * 400),
        Bar("a", -0.000123, -0.000456, 0.0),
    ]
    chart = svg_charts(bar_chart_svg(bars, fmt=number, width=300))[0]
    assert_texts_fit(chart)
    assert chart["width"] >= 300


def test_charts_use_the_page_width():
    chart = svg_charts(bar_chart_svg([Bar("gender · male→female", 0.2, 0.1, 0.3, 28)]))[0]
    assert chart["class"] == "chart" and chart["width"] >= 1000  # the page's content width, not ~60% of it
    from counterfactual_lab.report.html import _CSS

    assert "svg.chart{display:block;width:100%;height:auto}" in _CSS


def test_an_all_zero_chart_says_so(images):
    html = render(images, metrics=wide_metrics())
    odds = html.split("Equalized odds difference</h3>", 1)[1].split("</svg>", 1)[0]
    assert "0 for every group" in odds
    assert "0 for every group" not in html.split("Counterfactual flip rate", 1)[1].split("</svg>", 1)[0]
    partly = bar_chart_svg([Bar("a", 0.0, 0.0, 0.0), Bar("b", None, note="no pairs")])
    assert "0 for every group with a value" in partly


def test_undefined_values_are_drawn_with_their_reason_not_dropped(images):
    html = render(images, metrics=wide_metrics())
    ratio = html.split("Demographic parity ratio (1 = parity)</h3>", 1)[1].split("</svg>", 1)[0]
    chart = svg_charts(ratio + "</svg>")[0]
    labels = [t["s"] for t in chart["texts"] if t["anchor"] == "end"]
    assert len(labels) == 8, "all 8 rows are drawn, the 6 undefined ones too"
    texts = [t["s"] for t in chart["texts"]]
    assert "undefined: no group predicted 'chef' (0 / 0): the ratio is undefined (n=28)" in texts
    assert ratio.count("<rect") == 2
    nan = bar_chart_svg([Bar("age · doctor", float("nan"))])
    assert "undefined: no value was computed (no reason recorded)" in nan


def test_metrics_table_shows_undefined_values_and_their_note(images):
    html = render(images, metrics=wide_metrics())
    table = html.split("<h2>All metrics</h2>", 1)[1]
    assert "6 undefined (value null, the reason in note)" in table
    assert '<td class="undefined">undefined</td>' in table
    assert "<th>note</th>" in table and "no group predicted &#x27;pilot&#x27; (0 / 0): the ratio is undefined" in table


def test_dropped_examples_say_what_the_model_answered(images):
    counterfactuals, predictions, _ = frames(images)
    html = render(images)
    assert "doctor on the original; the counterfactual was not evaluated (dropped by the judge)" in html
    assert "→ None" not in html


def test_axis_labels_share_their_decimals():
    def ticks(svg: str) -> list[str]:
        return [t["s"] for t in svg_charts(svg)[0]["texts"] if t["anchor"] == "middle"]

    assert ticks(bar_chart_svg([Bar("a", 0.5)], domain=(0.0, 1.0))) == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert ticks(bar_chart_svg([Bar("a", 0.02)])) == ["0.000", "0.005", "0.010", "0.015", "0.020"]
    assert ticks(bar_chart_svg([Bar("a", 9.0)])) == ["0", "2", "4", "6", "8"]
    assert ticks(bar_chart_svg([Bar("a", 1.2)]))[:3] == ["0.00", "0.25", "0.50"]
    assert ticks(bar_chart_svg([Bar("a", 0.4)], fmt=percent, domain=(0.0, 1.0)))[-1] == "100%"
