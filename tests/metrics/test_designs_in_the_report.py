"""The audit designs of issue 18 in the template report: phrasing robustness, "unclear" shares, answer
change beside its control and the synthetic shift render in their own closed section, escaped like
every other piece of model or user text, and one phrasing's rows stay out of the forest plots and
the reported-not-called sentences while the metrics table keeps each row's own verdict. (Here,
beside the designs' hand-built fixtures it renders, rather than in tests/report/: those fixtures
live in this folder's test modules.)"""

from __future__ import annotations

import json

import polars as pl
import pytest
from test_answer_designs import QUESTION as UNCLEAR_QUESTION
from test_answer_designs import describe
from test_auditee_metrics import generated_pool, probes_frame, yes_values
from test_findings import r, table
from test_phrasing_robustness import AUDIT as PHRASED_AUDIT
from test_phrasing_robustness import QUESTION, _phrased, two_phrasings

from counterfactual_lab.config.audit_config import AuditSection
from counterfactual_lab.metrics.generative import auditee_metrics
from counterfactual_lab.report.findings import assess_findings
from counterfactual_lab.report.html import render_report

# A generate prompt is user text: it must reach the page escaped.
EVIL_PROMPT = "Describe <img src=x onerror=alert(1)> this person."


def designs_metrics() -> pl.DataFrame:
    """Per-phrasing, pooled and spread rows (two phrasings of a yes/no question), unclear shares,
    answer change with its control, and the synthetic shift, as one run's table."""
    phrased = auditee_metrics(generated_pool(), two_phrasings(), pl.DataFrame(), PHRASED_AUDIT)
    unclear_probes = probes_frame(yes_values(), prompt=UNCLEAR_QUESTION).with_columns(
        pl.col("content_key").map_elements(lambda k: {"r": 0.1, "c": 0.4, "o": 0.2, "k": 0.1}[k[0]],
                                           return_dtype=pl.Float64).alias("unclear"))
    unclear = auditee_metrics(generated_pool(), unclear_probes, pl.DataFrame(),
                              AuditSection(kind="vlm", model="m", yes_no=[UNCLEAR_QUESTION], unclear_option="unclear",
                                           bootstrap_samples=200))
    generations = describe({"r": ["the doctor smiles", "the doctor smiles kindly"], "c": ["the nurse smiles"]}
                           ).with_columns(pl.lit(EVIL_PROMPT).alias("prompt"))
    changed = auditee_metrics(generated_pool(), pl.DataFrame(), generations,
                              AuditSection(kind="vlm", model="m", generate={"prompts": [EVIL_PROMPT]}, bootstrap_samples=200))
    return pl.concat([phrased, unclear, changed], how="diagonal_relaxed")


def render(metrics: pl.DataFrame) -> str:
    return render_report(manifest={"run_id": "designs", "tiny_models": False, "models": {}}, metrics=metrics,
                         counterfactuals=pl.DataFrame(), predictions=pl.DataFrame(), load_image=lambda uri: None)


def section(html: str, section_id: str) -> str:
    return html.split(f'<details id="{section_id}"', 1)[1].split("</details>", 1)[0]


@pytest.fixture(scope="module")
def metrics() -> pl.DataFrame:
    return designs_metrics()


@pytest.fixture(scope="module")
def html(metrics) -> str:
    return render(metrics)


def test_every_design_renders_in_its_own_closed_section(html):
    designs = section(html, "designs")
    for title in ("Phrasing robustness", "&#34;Unclear&#34; answers", "How much answers change",
                  "Synthetic shift: generated images alone"):
        assert f">{title}</h3>" in designs, title
    assert "have the same sign in every phrasing" in designs and "differs by 0.4 between phrasings" in designs
    assert "share of answers that went to &#39;unclear&#39;: gender female 40%" in designs
    assert "(1 − ROUGE-L): 0.381" in designs and "control (another seed) 0.0714" in designs
    assert "not in them" in designs and "moves by" in designs
    # Apart from the findings: the first screen and the reported-not-called sentences do not hold them.
    assert "Synthetic shift" not in html.split("<details", 1)[0]
    reported = section(html, "reported") if 'id="reported"' in html else ""
    assert "generated images alone" not in reported and "between the phrasings" not in reported
    assert "in the phrasing" not in reported


def test_design_lines_are_escaped_and_add_no_script_or_style(html):
    designs = section(html, "designs")
    assert "Describe &lt;img src=x onerror=alert(1)&gt; this person." in designs
    assert "<img src=x" not in html
    assert html.lower().count("<script") == 2, "no script but the page's own and its data block"
    assert "style=" not in designs and "<style" not in designs


def test_one_phrasings_rows_keep_their_own_verdict_and_stay_out_of_the_forests(html, metrics):
    block = html.split('<script type="application/json" id="metrics-data">', 1)[1].split("</script>", 1)[0]
    payload = json.loads(block)
    columns = payload["columns"]
    assert {"phrasing", "measure"} <= set(columns)
    at = {c: i for i, c in enumerate(columns)}
    rows = [row for row in payload["rows"] if row[at["metric"]] == "yes_prob_gap_signed" and row[at["group"]] is None
            and row[at["stratum"]] == "generated" and row[at["query"]] == QUESTION]
    by_phrasing = {row[at["phrasing"]]: row[at["verdict"]] for row in rows}
    pooled = assess_findings(metrics).filter(
        (pl.col("metric") == "yes_prob_gap_signed") & pl.col("group").is_null() & (pl.col("stratum") == "generated")
        & (pl.col("query") == QUESTION) & pl.col("phrasing").is_null()).row(0, named=True)
    assert by_phrasing[None] == ("called" if pooled["called"] else pooled["verdict"])
    assert by_phrasing[QUESTION] == by_phrasing["Would you say this person is a doctor?"] == "reported"
    # The forest of that prompt's signed gap counts its pooled rows only.
    findings = assess_findings(metrics)
    pooled_rows = findings.filter((pl.col("metric") == "yes_prob_gap_signed") & (pl.col("query") == QUESTION)
                                  & (pl.col("stratum") != "observational") & pl.col("phrasing").is_null()).height
    forest = html.split("mean signed Δ for &#39;Is this person a doctor?&#39;</b>", 1)[1].split("</figcaption>", 1)[0]
    assert f"of {pooled_rows} rows" in forest, forest


def test_a_called_line_on_the_first_screen_says_whether_every_phrasing_agrees():
    rows = _phrased("yes_prob_gap_signed", [0.5, 0.15, -0.05])
    rows.append(r("control_yes_prob_gap_signed", 0.0, 0.01, query=QUESTION, sources=40))
    called = render(table(rows)).split('<ol id="called"', 1)[1].split("</ol>", 1)[0]
    assert called.count("<li ") == 1
    visible = called.split("</span>", 1)[1]  # not the title (the sentence says it too)
    assert "signed Δ for &#39;Is this person a doctor?&#39; (phrasing-dependent) · 0.2" in visible, visible
