"""The HTML report and the plain-words findings, on hand-made frames and small PIL images: the answer
on the first screen, the rest in closed sections, the table as data, images as capped WebP
thumbnails, and every value escaped by the templates."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
from html.parser import HTMLParser

import polars as pl
import pytest
from PIL import Image

from counterfactual_lab.report.examples import select_examples
from counterfactual_lab.report.findings import assess_findings, headline_findings, headline_table, table_cells
from counterfactual_lab.report.html import image_loader, render_report
from counterfactual_lab.report.markdown import summary_markdown

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
        self.scripts: list[dict] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "script":
            self.scripts.append(attrs)
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
        if "body" in self.stack and "style" not in self.stack and "script" not in self.stack and data.strip():
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


def data_uri_image(src: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def table_payload(html: str) -> dict:
    block = html.split('<script type="application/json" id="metrics-data">', 1)[1].split("</script>", 1)[0]
    return json.loads(block)


def section(html: str, section_id: str) -> str:
    return html.split(f'<details id="{section_id}"', 1)[1].split("</details>", 1)[0]


def first_screen(html: str) -> str:
    """What the page holds before its first collapsible section."""
    return html.split("<body>", 1)[1].split("<details", 1)[0]


@pytest.fixture(scope="module")
def report(images) -> str:
    """The report of the default frames, rendered once for the tests that only read it."""
    return render(images)


def test_report_parses_and_inlines_every_shown_image_as_a_webp_thumbnail(images, report):
    parsed = parse(report)
    # 3 kept pairs + 1 dropped pair (the failed row has no image): 2 images each.
    assert len(parsed.img_src) == 8
    assert all(src.startswith("data:image/webp;base64,") for src in parsed.img_src)
    sizes = [data_uri_image(src).size for src in parsed.img_src]
    assert data_uri_image(parsed.img_src[0]).format == "WEBP"
    assert max(max(size) for size in sizes) <= 256, "large images are shrunk to thumbnails"
    assert (64, 48) in sizes, "small images keep their size"


def test_report_is_self_contained_and_allows_no_network(images, report):
    html = report
    parsed = parse(html)
    external = [link for link in parsed.links if not link.startswith(("data:", "#"))]
    assert external == []
    # One inline script (the table's), one JSON data block; nothing loaded from anywhere.
    assert parsed.scripts == [{"type": "application/json", "id": "metrics-data"}, {}]
    csp = html.split('http-equiv="Content-Security-Policy" content="', 1)[1].split('"', 1)[0]
    assert "default-src 'none'" in csp and "img-src data:" in csp and "script-src 'sha256-" in csp
    script = html.rsplit("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp, "the CSP allows exactly the page's own script"
    assert "innerHTML" not in script and "textContent" in script


def test_first_visible_line_names_models_and_warns_for_tiny_models(images):
    first = parse(render(images, tiny=True)).body_text[0]
    assert "openai/clip-vit-base-patch32" in first and "revision 3d74acf" in first
    assert "google/siglip-base-patch16-224" in first
    assert "tiny random-weight" in first and "mean nothing" in first
    real = parse(render(images, tiny=False)).body_text
    assert "google/siglip-base-patch16-224" in real[0]
    assert not any("mean nothing" in text for text in real)


def test_dataset_text_is_escaped_everywhere(images, report):
    html = report
    assert html.lower().count("<script") == 2, "no script but the page's own and its data block"
    assert "&lt;script&gt;alert(&#34;caption&#34;)&lt;/script&gt;" in html, "captions are escaped"
    assert "<img src=x" not in html and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    # In the table's JSON a query cannot close the data block: < and > are written as \u003c, \u003e.
    assert "a photo of a \\u003cb\\u003enurse\\u003c/b\\u003e" in html and "<b>nurse</b>" not in html
    assert any(row[5] == "a photo of a <b>nurse</b>" for row in table_payload(html)["rows"])


def test_the_first_screen_holds_the_answer_and_everything_else_is_collapsed(images, report):
    html = report
    top = first_screen(html)
    ids = [part.split('"', 1)[0] for part in top.split(' id="')[1:]]
    assert ids[:2] == ["models", "people"], "models first, people's review right after the heading"
    assert ids.index("verdict") < ids.index("called") < ids.index("forests")
    assert "<h1 " in top and top.index("<h1 ") < top.index('id="people"')
    verdict = top.split('id="verdict"', 1)[1].split("</p>", 1)[0]
    assert "Finding: 4 differences called for age and gender" in verdict and "family-wise at 95%" in verdict
    called = top.split('<ol id="called"', 1)[1].split("</ol>", 1)[0]
    lines = called.count("<li ")
    assert lines == 4, "only called (and confounded) findings: 4 here"
    assert "<b>age young→old</b> · flip rate · 40% [30%, 50%] · control 10% [5%, 16%]" in called
    assert "judge kept</b> 3 of 5 counterfactuals (60%)" in top
    # One forest plot per family (flip rate, |Δ|, signed Δ); the group and skew plots are below.
    assert top.count('<figure class="forest"') == 3 and top.count("<svg") == 3
    # Below the first screen: closed sections, none open.
    rest = html.split("<body>", 1)[1][len(top):]
    assert rest.count("<details") == 6 and " open" not in rest.split("<script", 1)[0].replace("<details id", "")
    for name in ("findings", "metrics", "reported", "examples", "accounting", "provenance"):
        assert f'<details id="{name}"' in rest
    # In words, each comparison with its verdict and why it is not called.
    assert "<td>no difference detected (not above the control)</td>" in section(html, "findings")


def test_no_finding_and_undefined_runs_say_so_in_one_sentence(images):
    quiet = metrics_frame().filter(~pl.col("metric").is_in(["flip_rate", "prob_gap_abs", "prob_gap_signed"]))
    quiet = pl.concat([quiet, metrics_frame().filter(pl.col("metric") == "flip_rate").with_columns(
        pl.lit(0.06).alias("value"), pl.lit(0.03).alias("ci_low"), pl.lit(0.1).alias("ci_high"))])
    top = first_screen(render(images, metrics=quiet))
    assert "No finding: nothing called for age and gender in 3 comparisons" in top
    assert "Nothing called or confounded. Closest:" in top
    undefined = metrics_frame().with_columns(
        pl.when(pl.col("metric") == "flip_rate").then(None).otherwise(pl.col("value")).alias("value"),
        pl.when(pl.col("metric") == "flip_rate").then(pl.lit("no pairs: every set dropped")).otherwise(pl.col("note")).alias("note"),
        *(pl.when(pl.col("metric") == "flip_rate").then(None).otherwise(pl.col(c)).alias(c) for c in ("ci_low", "ci_high", "group")),
    ).filter(~pl.col("metric").str.starts_with("prob_gap"))
    top = first_screen(render(images, metrics=undefined))
    assert "Undefined: nothing called, and age and gender could not be compared (no pairs: every set dropped" in top


def test_a_confounded_row_and_min_effect_are_shown_where_the_table_has_them():
    """Issue 15's columns, read where present: a confounded row is listed beside what moved, and its
    min_effect; the run verdict sentence names it."""
    from counterfactual_lab.report.summary import finding_line, verdict_sentence

    findings = assess_findings(metrics_frame()).with_columns(
        pl.when(pl.col("called") & (pl.col("attribute") == "age")).then(pl.lit("confounded")).otherwise(pl.col("verdict")).alias("verdict"),
        (pl.col("called") & (pl.col("attribute") != "age")).alias("called"),
        pl.lit(0.02).alias("min_effect"), pl.lit("the mean blue outside the person moved").alias("confounded_by"))
    row = findings.filter(pl.col("verdict") == "confounded").row(0, named=True)
    line = finding_line(row, {})
    assert (line.verdict, line.subject, line.min_effect) == ("confounded", "age young→old", "min_effect 0.02")
    assert line.why == "the mean blue outside the person moved"
    assert verdict_sentence("confounded", findings.filter(pl.col("attribute") == "age"), {}).startswith(
        "Confounded: 1 difference for age move with what the generator changed along with the attribute")


def test_forest_rows_carry_their_control_and_the_min_effect_zone():
    from counterfactual_lab.report.forests import forest_row, min_effect_of

    # Where the table has no min_effect of its own (issue 15 adds one per row), the manifest's is drawn.
    rows = {(r["metric"], r["group"], r["label"]): {**r, "min_effect": None} for r in assess_findings(metrics_frame()).to_dicts()}
    flip = forest_row(rows[("flip_rate", "male→female", None)], {"min_effect": 0.05})
    assert (flip.value, flip.emphasis, flip.control_low, flip.control_high) == (0.23, "called", 0.03, 0.1)
    assert flip.zone_low == pytest.approx(0.06) and flip.zone_high == pytest.approx(0.11), "above the control's estimate"
    signed_row = rows[("prob_gap_signed", "male→female", "doctor")]
    signed = forest_row(signed_row, {"min_effect": {"probability": 0.02}})
    band = signed_row.get("control_band")  # a signed gap judged against ±band of its control (before issue 15)
    expected = (-band, band) if band is not None else (signed_row["control_ci_low"], signed_row["control_ci_high"])
    assert (signed.control_low, signed.control_high) == expected
    assert (signed.zone_low, signed.zone_high) == (-0.02, 0.02), "around no change"
    assert signed.label == "gender male→female · doctor"
    assert forest_row(rows[("flip_rate", "male→female", None)], {}).zone_low is None, "no min_effect recorded: no zone"
    assert min_effect_of({"metric": "flip_rate", "min_effect": 0.03}, {"min_effect": 0.05}) == 0.03, "the row's own first"
    own = forest_row({**rows[("prob_gap_signed", "male→female", "doctor")], "min_effect": 0.03}, {"min_effect": 0.05})
    assert (own.zone_low, own.zone_high) == (-0.03, 0.03)
    assert min_effect_of({"metric": "cits"}, {"min_effect": 0.05}) is None


def test_the_metrics_table_is_data_with_every_row_and_its_verdict(images, report):
    html = render(images, metrics=wide_metrics())
    payload = table_payload(html)
    columns, rows = payload["columns"], payload["rows"]
    assert len(rows) == wide_metrics().height
    assert columns[:6] == ["metric", "attribute", "group", "label", "query", "value"], "in the table's order"
    assert {"verdict", "note"} <= set(columns) and "value" in payload["numeric"]
    undefined = [r for r in rows if r[columns.index("value")] is None]
    assert len(undefined) == 6 and all("undefined" in r[columns.index("note")] for r in undefined)
    assert "6 undefined (value null, the reason in note)" in section(html, "metrics")
    payload = table_payload(report)
    verdicts = {r[payload["columns"].index("metric")]: r[payload["columns"].index("verdict")] for r in payload["rows"]}
    assert verdicts["control_flip_rate"] == "control" and verdicts["cits"] == "reported"


def test_skew_rows_print_their_k_desired_distribution_and_protocol(images):
    metrics = with_rankings(metrics_frame())
    reported = section(render(images, metrics=metrics), "reported")
    assert "gender: K = 10, desired uniform: female=0.5, male=0.5, geyik protocol" in reported
    assert "Averaged over the queries (each ranking its own sets)" in reported
    assert "Query: a photo of a doctor" in reported and "Query: a photo of a &lt;b&gt;nurse&lt;/b&gt;" in reported
    columns = table_payload(render(images, metrics=metrics))["columns"]
    assert {"protocol", "k", "desired"} <= set(columns)


def test_every_section_is_drawn_and_the_group_plots_show_undefined_rows(images):
    html = render(images, metrics=wide_metrics())
    reported = section(html, "reported")
    ratio = reported.split("Demographic parity ratio (1 = parity)", 1)[1].split("</figure>", 1)[0]
    assert ratio.count("undefined: no group predicted") == 6, "undefined rows are drawn with their reason"
    assert "Accounting closes" in section(html, "accounting") and "undecodable image" in section(html, "accounting")
    assert "Library versions" in section(html, "provenance")


def test_examples_show_flips_first_then_the_largest_change_and_respect_max_examples(images):
    counterfactuals, predictions, _ = frames(images)
    kept, dropped = select_examples(counterfactuals, predictions, max_examples=24)
    assert [p.row["seed"] for p in kept if p.row["source_id"] == "s1"] == [1, 0]
    assert kept[0].flipped and kept[0].original_top1 == "doctor" and kept[0].counterfactual_top1 == "nurse"
    assert kept[0].change == pytest.approx(0.4), "|P_cf(doctor) − P_original(doctor)| = |0.3 − 0.7|"
    assert [p.row["source_id"] for p in dropped] == ["s3"]
    unflipped = [p for p in kept if not p.flipped]
    assert [p.change for p in unflipped] == sorted((p.change for p in unflipped), reverse=True)
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
    assert "Undefined: no metrics were computed in this run." in html and "No metrics were computed" in html


def test_dropped_examples_say_what_the_model_answered(images, report):
    html = report
    assert "doctor on the original; the counterfactual was not evaluated (dropped by the judge)" in html
    assert "→ None" not in html


def test_the_same_run_renders_byte_identical(images, report):
    assert render(images) == report


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


def test_every_skew_and_ndkl_number_says_its_k_desired_distribution_and_protocol():
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


def wide_metrics() -> pl.DataFrame:
    """Long labels, an all-zero metric, and a parity ratio undefined for most groups."""
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


def test_examples_without_reconstructions_say_the_comparison_is_real_vs_generated(images, report):
    html = report
    assert "compared with the <b>real original</b>" in html and "generated vs real" in html
    assert "original: doctor → counterfactual: nurse (flipped)" in html
