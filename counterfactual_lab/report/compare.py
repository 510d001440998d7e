"""Two runs side by side (``cflab compare RUN_A RUN_B``, :func:`compare_runs`): what changed from A
to B beyond its intervals, and whether the runs are comparable at all.

**Rows.** Each run's metrics are assessed (:func:`~counterfactual_lab.report.findings.assess_findings`:
the one decision every view shows) and joined on (metric, stratum, attribute, group, label, query,
phrasing, measure).
A row is listed when

* a finding **appeared** (called or confounded in B, not in A) or **disappeared** (the reverse);
* its **verdict changed** between called and confounded;
* it **changed beyond its interval**: the interval of B − A excludes 0
  (:mod:`counterfactual_lab.report.differences`: paired over the sources the runs share for the
  counterfactual pair metrics, else from both runs' intervals; one Bonferroni level over every row
  compared; a synthetic-shift row only beyond its measure's ``min_effect`` too, since another
  generator seed redraws every reconstruction it rests on);
* it is **only in A** or **only in B** (an attribute, label or query one run did not have);

and counted as unchanged otherwise. Controls and people's review rows are not compared.

**Comparability.** From the two manifests, one plain warning per thing that makes the numbers of
the runs incomparable: the model under audit, the generator or the judge (their content
identities), the dataset (its fingerprint), the metric parameters; and notes for what else
differs (what was generated and judged, library versions, tiny models, a failed run).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from counterfactual_lab.metrics.findings import bias_verdict
from counterfactual_lab.metrics.intervals import bonferroni_level, percent_level
from counterfactual_lab.metrics.schema import (
    DEFAULT_MODALITY,
    ROW_KEY,
    STRATUM_GENERATED,
    metric_kind,
    missing,
    row_key,
)
from counterfactual_lab.metrics.synthetic_shift import SYNTHETIC_SHIFT
from counterfactual_lab.report.differences import (
    FROM_INTERVALS,
    PAIRED,
    Difference,
    PairedDifferences,
    from_intervals,
    seed_allowance,
    shift_allowance,
)
from counterfactual_lab.report.findings import assess_findings
from counterfactual_lab.report.forests import decision_interval
from counterfactual_lab.report.sentences import number, percent
from counterfactual_lab.report.templating import render, short_time
from counterfactual_lab.runs.reader import RunTables, read_run
from counterfactual_lab.storage.files import write_bytes_atomic

COMPARE_NAME = "compare.html"
APPEARED, DISAPPEARED, VERDICT_CHANGED, CHANGED = "appeared", "disappeared", "verdict changed", "changed"
ONLY_A, ONLY_B = "only in A", "only in B"
CHANGES = (APPEARED, DISAPPEARED, VERDICT_CHANGED, CHANGED, ONLY_A, ONLY_B)
KEY = ROW_KEY
_PHRASING, _MODALITY = KEY.index("phrasing"), KEY.index("modality")
NOTABLE = ("called", "confounded")
# What makes two runs' numbers comparable: (the manifest's words for it, how to read it from a manifest).
MODEL_ROLES = {"audit": "model under audit", "generator": "generator", "judge": "judge"}
_PAIR_KINDS = ("flip_rate", "prob_gap_abs", "prob_gap_signed")
_ARGMAX_KINDS = ("max_skew", "min_skew")


@dataclass(frozen=True)
class RunSide:
    """One of the two runs: where it is, when it finished, its verdict and how many findings it called."""

    run_id: str
    run_uri: str
    finished: str
    verdict: str
    called: int
    confounded: int


@dataclass(frozen=True)
class RowChange:
    """One listed row: how it changed, its key, each run's verdict and value, and B − A."""

    change: str
    key: dict[str, Any]
    verdict_a: str | None
    verdict_b: str | None
    value_a: str
    value_b: str
    difference: Difference

    @property
    def label(self) -> str:
        """'flip_rate gender male→female' with the label and query where the row has them."""
        parts = [self.key["metric"], self.key.get("measure"), self.key["attribute"], self.key["group"], self.key["label"],
                 self.key["query"]]
        text = " ".join(str(p) for p in parts if p)
        if self.key.get("phrasing"):
            text += f" (phrasing '{self.key['phrasing']}')"
        if self.key.get("modality") not in (None, DEFAULT_MODALITY):
            text += f" ({self.key['modality']} modality)"
        return text + ("" if self.key["stratum"] in (None, STRATUM_GENERATED) else f" [{self.key['stratum']}]")

    @property
    def difference_text(self) -> str:
        d = self.difference
        if d.value is None:
            return "n/a"
        fmt = percent if metric_kind(str(self.key["metric"])) == "flip_rate" else number
        sign = "+" if d.value > 0 else ""
        interval = f" [{fmt(d.low)}, {fmt(d.high)}]" if d.low is not None else " (no interval)"
        return f"{sign}{fmt(d.value)}{interval}"

    @property
    def rule_text(self) -> str:
        d = self.difference
        rule = f"paired over {d.shared_sources} shared sources" if d.rule == PAIRED else d.rule
        return rule + (f"; beyond ±{number(d.allowance)} (another seed alone)" if d.allowance else "")


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_runs` found (module doc); :meth:`text` and :meth:`html` say it."""

    a: RunSide
    b: RunSide
    warnings: list[str]
    notes: list[str]
    changes: list[RowChange]
    compared: int
    unchanged: int
    level: float
    paired_rows: int
    shared_sources: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def any_change(self) -> bool:
        """Whether a finding appeared, disappeared or changed verdict, or a row changed beyond its interval."""
        return any(self.counts.get(c) for c in (APPEARED, DISAPPEARED, VERDICT_CHANGED, CHANGED))

    def summary(self) -> str:
        """One sentence: what appeared, disappeared or changed beyond its interval, or that nothing did."""
        said = [f"{self.counts[c]} {c}" for c in (APPEARED, DISAPPEARED, VERDICT_CHANGED, CHANGED) if self.counts.get(c)]
        if not said:
            return (f"No change beyond intervals: no finding appeared or disappeared, and none of the {self.compared} "
                    f"rows compared moved beyond the interval of its difference (B − A at {percent_level(self.level)}).")
        return (f"{', '.join(said)} (of {self.compared} rows compared; intervals of B − A at "
                f"{percent_level(self.level)}, Bonferroni over the rows).")

    def text(self) -> str:
        """The terminal table ``cflab compare`` prints."""
        lines = [f"A: {self.a.run_id}  {self.a.finished}  {self.a.verdict} ({self.a.called} called)  {self.a.run_uri}",
                 f"B: {self.b.run_id}  {self.b.finished}  {self.b.verdict} ({self.b.called} called)  {self.b.run_uri}", ""]
        lines += [f"WARNING: {w}" for w in self.warnings]
        lines += [f"note: {n}" for n in self.notes]
        if self.warnings or self.notes:
            lines.append("")
        lines.append(self.summary())
        lines.append(f"B − A intervals: paired over shared sources for {self.paired_rows} pair-metric rows "
                     f"({self.shared_sources} sources shared), from both runs' intervals for the rest.")
        if self.changes:
            header = ["change", "row", "A", "B", "B − A [interval]", "rule"]
            body = [[c.change, c.label, f"{c.verdict_a or '-'}: {c.value_a}", f"{c.verdict_b or '-'}: {c.value_b}",
                     c.difference_text, c.rule_text] for c in self.changes]
            widths = [min(60, max(len(header[i]), *(len(r[i]) for r in body))) for i in range(len(header) - 1)]
            lines += ["", "  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[-1]]
            lines += ["  ".join(cell[:w].ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in body]
        lines.append("")
        lines.append(f"{self.unchanged} row(s) unchanged.")
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """``compare.html``: the comparability box, the summary, the listed rows, the rest in sections."""
        return render("compare.html.j2", title=f"Compare {self.a.run_id} → {self.b.run_id}", comparison=self)

    def write(self, uri: str, storage_options: dict[str, Any] | None = None) -> str:
        """Write :meth:`html` to ``uri`` (local or ``s3://``); returns the URI."""
        write_bytes_atomic(uri, self.html().encode("utf-8"), storage_options)
        return uri


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _differing(a: Any, b: Any) -> list[str]:
    """'key A vs B' for each dotted key whose values differ."""
    fa, fb = _flat(a or {}), _flat(b or {})
    return [f"{key} {_short(fa.get(key, 'unset'))} vs {_short(fb.get(key, 'unset'))}"
            for key in sorted(set(fa) | set(fb)) if fa.get(key) != fb.get(key)]


def _model_name(manifest: Mapping[str, Any], role: str) -> str:
    model = (manifest.get("models") or {}).get(role) or {}
    name = str(model.get("model") or "not recorded")
    return name + (f"@{model['revision']}" if model.get("revision") else "")


def comparability(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(warnings, notes) about whether two runs' numbers can be compared, from their manifests (module doc)."""
    warnings, notes = [], []
    ids_a = (a.get("run_identity") or {}).get("models") or {}
    ids_b = (b.get("run_identity") or {}).get("models") or {}
    for role, words in MODEL_ROLES.items():
        name_a, name_b = _model_name(a, role), _model_name(b, role)
        same = ids_a.get(role) == ids_b.get(role) if (ids_a.get(role) or ids_b.get(role)) else name_a == name_b
        if not same:
            warnings.append(f"The {words} differs: A {name_a} ({_short(ids_a.get(role) or 'no identity', 19)}) vs "
                            f"B {name_b} ({_short(ids_b.get(role) or 'no identity', 19)}).")
    fingerprint_a = (a.get("dataset") or {}).get("fingerprint")
    fingerprint_b = (b.get("dataset") or {}).get("fingerprint")
    if fingerprint_a != fingerprint_b:
        warnings.append(f"The dataset differs: fingerprint A {_short(fingerprint_a, 16)} vs B {_short(fingerprint_b, 16)} "
                        "(other images, other rows, or other captions).")
    parameters = _differing(a.get("metrics"), b.get("metrics"))
    if parameters:
        warnings.append("The metric parameters differ: " + "; ".join(parameters[:6])
                        + (f"; and {len(parameters) - 6} more" if len(parameters) > 6 else "") + ".")
    stages_a = (a.get("run_identity") or {}).get("stages") or {}
    stages_b = (b.get("run_identity") or {}).get("stages") or {}
    for stage in sorted(set(stages_a) | set(stages_b)):
        if stage == "audit" and parameters:
            continue  # said above
        differing = _differing(stages_a.get(stage), stages_b.get(stage))
        if differing:
            notes.append(f"What the {stage} stage did differs: " + "; ".join(differing[:4])
                         + (f"; and {len(differing) - 4} more" if len(differing) > 4 else "") + ".")
    versions = _differing(a.get("versions"), b.get("versions"))
    if versions:
        notes.append("Library versions differ: " + "; ".join(versions[:5]) + ("; …" if len(versions) > 5 else "") + ".")
    for side, manifest in (("A", a), ("B", b)):
        if manifest.get("status") == "failed":
            warnings.append(f"Run {side} is marked failed (too many failed work items): its numbers are not an audit to rely on.")
    if a.get("tiny_models") or b.get("tiny_models"):
        notes.append("Tiny random-weight test models ran" + (" in both runs" if a.get("tiny_models") and b.get("tiny_models")
                                                             else "") + ": their numbers mean nothing.")
    return warnings, notes


def _value_text(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return "absent"
    if missing(row.get("value")):
        return "undefined"
    kind = metric_kind(str(row["metric"]))
    fmt = percent if kind == "flip_rate" else number
    low, high = decision_interval(row)
    group = f" ({row['group']})" if kind in _ARGMAX_KINDS and row.get("group") else ""
    return fmt(row["value"]) + ("" if low is None else f" [{fmt(low)}, {fmt(high)}]") + group


def _side(run: RunTables, findings: pl.DataFrame) -> RunSide:
    verdict = bias_verdict(run.metrics) if run.metrics.height else "undefined"
    called = int(findings["called"].sum()) if findings.height else 0
    confounded = int((findings["verdict"] == "confounded").sum()) if findings.height else 0
    return RunSide(run.run_id, run.run_uri, short_time(run.manifest.get("finished_at")) or "-", verdict, called, confounded)


def _key(row: Mapping[str, Any]) -> tuple:
    """The row's key; MaxSkew and MinSkew rows name their most over- or under-represented group, part
    of the value, not of the key."""
    group = None if metric_kind(str(row.get("metric"))) in _ARGMAX_KINDS else row.get("group")
    return tuple(group if c == "group" else value for c, value in zip(KEY, row_key(row, KEY)))


def _classify(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, difference: Difference) -> str | None:
    if a is None:
        return ONLY_B
    if b is None:
        return ONLY_A
    notable_a, notable_b = a.get("verdict") in NOTABLE, b.get("verdict") in NOTABLE
    if notable_b and not notable_a:
        return APPEARED
    if notable_a and not notable_b:
        return DISAPPEARED
    if notable_a and notable_b and a.get("verdict") != b.get("verdict"):
        return VERDICT_CHANGED
    return CHANGED if difference.beyond else None


def compare_tables(run_a: RunTables, run_b: RunTables) -> Comparison:
    """:func:`compare_runs` on runs already read."""
    findings_a, findings_b = assess_findings(run_a.metrics), assess_findings(run_b.metrics)
    rows_a = {_key(r): r for r in findings_a.to_dicts()}
    rows_b = {_key(r): r for r in findings_b.to_dicts()}
    both = [k for k in rows_a if k in rows_b]
    confidence = float((run_b.manifest.get("metrics") or {}).get("confidence")
                       or (run_a.manifest.get("metrics") or {}).get("confidence") or 0.95)
    compared = sum(1 for k in both if not missing(rows_a[k].get("value")) and not missing(rows_b[k].get("value")))
    level = bonferroni_level(confidence, max(compared, 1))
    seed = int((run_b.manifest.get("metrics") or {}).get("bootstrap_seed") or 0)
    paired = PairedDifferences(run_a.manifest, run_a.predictions, run_b.manifest, run_b.predictions, level, seed)
    changes, unchanged, paired_rows, shared_sources = [], 0, 0, 0
    for key in [*rows_a, *(k for k in rows_b if k not in rows_a)]:
        a, b = rows_a.get(key), rows_b.get(key)
        difference = Difference(None, None, None, FROM_INTERVALS)
        if a is not None and b is not None:
            difference = from_intervals(a, b, confidence, level)
            kind = metric_kind(str(key[0]))
            if kind == SYNTHETIC_SHIFT and difference.low is not None:
                difference = replace(difference, allowance=shift_allowance(a, b, run_a.manifest, run_b.manifest))
            # Paired over shared sources: the pooled rows (predictions hold one phrasing's scores per column)
            # of the image modality (the predictions' scores are the images' own readings, not the text's).
            elif (kind in _PAIR_KINDS and difference.low is not None and key[_PHRASING] is None
                  and key[_MODALITY] == DEFAULT_MODALITY):
                allowance = seed_allowance(a, b)
                found = paired.interval((key[1], key[2], key[3], kind, key[4]))
                if found is not None and found[0] is not None:
                    difference = Difference(difference.value, found[0], found[1], PAIRED, found[2], allowance)
                    paired_rows += 1
                    shared_sources = max(shared_sources, found[2])
                else:
                    difference = replace(difference, allowance=allowance)
        change = _classify(a, b, difference)
        if change is None:
            unchanged += 1
            continue
        changes.append(RowChange(change, dict(zip(KEY, key)), (a or {}).get("verdict"), (b or {}).get("verdict"),
                                 _value_text(a), _value_text(b), difference))
    changes.sort(key=lambda c: (CHANGES.index(c.change), not c.difference.beyond, -abs(c.difference.value or 0.0)))
    counts = {c: sum(1 for x in changes if x.change == c) for c in CHANGES}
    warnings, notes = comparability(run_a.manifest, run_b.manifest)
    return Comparison(_side(run_a, findings_a), _side(run_b, findings_b), warnings, notes, changes, compared, unchanged,
                      level, paired_rows, shared_sources, counts)


def compare_runs(run_a: str, run_b: str, storage_options: dict[str, Any] | None = None, out: str | None = None) -> Comparison:
    """Compare two finished runs (local paths or ``s3://`` URIs; module doc). With ``out``, also
    write ``compare.html`` there. Raises :class:`~counterfactual_lab.errors.UserError` for a missing
    or incomplete run."""
    comparison = compare_tables(read_run(run_a, storage_options), read_run(run_b, storage_options))
    if out is not None:
        comparison.write(out, storage_options)
    return comparison
