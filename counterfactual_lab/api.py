"""The Python API: what a notebook needs, in four names.

* :class:`CounterfactualGenerator` makes and judges counterfactuals of one image in memory:
  PIL image and caption in, :class:`Counterfactual` objects out (the edited image, the
  rewritten caption, what was substituted, the judge's scores and verdict). No Prefect, no
  files: the same editors, caption rewriting and judge formulas as the pipeline.
* :func:`run_audit` runs the whole audit (the ``dataset-audit`` Prefect flow, imported only
  when called) from a config file or a dict and returns the finished run.
* :func:`open_run` opens a finished run, local or ``s3://``, as an :class:`AuditRun`: its
  tables as polars DataFrames, and in Jupyter its headline findings (``_repr_html_``).
* :func:`compare_runs` sets two finished runs side by side (``cflab compare``): which findings
  appeared, disappeared or changed beyond their intervals, and whether the runs are comparable;
  ``.text()`` is the table, ``.write("compare.html")`` the page.

Example::

    from PIL import Image
    import counterfactual_lab as cfl

    generator = cfl.CounterfactualGenerator(method="img2img", model=".cflab/models/img2img",
                                            judge=".cflab/models/clip", steps=20)
    for cf in generator.generate(Image.open("doctor.png"), "a man working as a doctor", "gender"):
        print(cf.caption, cf.explanation, cf.scores, cf.passed)

    run = cfl.run_audit("configs/audit.yaml")          # or a dict of the same keys
    run.metrics.filter(pl.col("metric") == "flip_rate")
    run                                                 # in Jupyter: the headline findings
    print(cfl.compare_runs("out/run-a", "out/run-b").text())
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from PIL import Image
from pydantic import ValidationError

from counterfactual_lab.config.audit_config import GenerationSection, JudgeSection
from counterfactual_lab.config.dataset_spec import DEFAULT_VOCABULARIES, _first_error
from counterfactual_lab.config.methods import DEFAULT_METHOD
from counterfactual_lab.errors import ConfigError, UserError
from counterfactual_lab.judge.edits import score_candidates
from counterfactual_lab.judge.scores import verdict
from counterfactual_lab.models.clip import ClipEmbedder, image_content_key
from counterfactual_lab.plan.captions import (
    detect_value,
    edit_instruction,
    rewrite_caption,
)
from counterfactual_lab.plan.work_items import (
    WorkItem,
    generator_fingerprint,
    work_item_key,
)
from counterfactual_lab.report.compare import compare_runs
from counterfactual_lab.report.examples import thumbnail_data_uri
from counterfactual_lab.report.findings import assess_findings, run_verdict_line
from counterfactual_lab.report.markdown import accounting_lines, models_line
from counterfactual_lab.report.templating import render_fragment
from counterfactual_lab.report.text import format_headline
from counterfactual_lab.runs.reader import RunTables, read_run

__all__ = ["AuditRun", "Counterfactual", "CounterfactualGenerator", "compare_runs", "open_run"]

# The scores the judge gives each candidate (see counterfactual_lab.judge.edits for the formulas).
SCORE_NAMES = ("text_similarity", "direction_similarity", "image_similarity", "attribute_ok", "attribute_margin")
_MEMORY = "memory://"  # URIs of images that live only in this process (the judge's loader reads them from a dict)


@dataclass(frozen=True)
class Counterfactual:
    """One generated counterfactual of an in-memory image.

    ``scores`` holds ``text_similarity`` = cos(I₁, T₁), ``direction_similarity`` =
    cos(I₁ − I₀, T₁ − T₀), ``image_similarity`` = cos(I₀, I₁), ``attribute_ok`` and
    ``attribute_margin`` (empty without a judge). ``passed`` is True when every judge check
    holds (None without a judge); ``drop_reason`` names the first check that failed.
    """

    image: Any  # PIL.Image.Image
    caption: str
    explanation: str
    attribute: str
    source_value: str | None
    target_value: str
    seed: int
    instruction: str
    source_image: Any = field(repr=False)
    source_caption: str = field(repr=False, default="")
    scores: dict[str, Any] = field(default_factory=dict)
    passed: bool | None = None
    drop_reason: str | None = None

    def _repr_html_(self) -> str:
        scores = ", ".join(f"{k.replace('_similarity', '')} {_short(v)}" for k, v in self.scores.items() if v is not None)
        verdict = {None: "not judged", True: "passed"}.get(self.passed, f"dropped: {self.drop_reason}")
        rows = [
            ("change", f"{self.attribute}: {self.source_value} → {self.target_value} (seed {self.seed})"),
            ("caption", self.source_caption), ("counterfactual caption", self.caption),
            ("explanation", self.explanation), ("judge", f"{scores or 'no scores'}; {verdict}"),
        ]
        images = [(thumbnail_data_uri(im), alt) for im, alt in ((self.source_image, "original"), (self.image, "counterfactual"))]
        return render_fragment("_notebook_counterfactual.html.j2", images=images, rows=rows)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class CounterfactualGenerator:
    """Make (and, with a judge, verify) counterfactual images of single images, in memory.

    ``method``: ``img2img``, ``instruct-pix2pix`` or ``ledits``; ``model``: a hub id or a
    local folder written by ``save_pretrained`` (safetensors only). ``steps``,
    ``guidance_scale``, ``resolution`` and ``params`` mean what they mean under
    ``generation:`` in an audit config; ``judge``: a CLIP-family model (None: no judging),
    with ``thresholds`` (``{text, direction, image}``) and ``check_attribute`` as under
    ``judge:``. ``vocabularies`` (attribute → values) says which values an attribute takes
    (default: the built-in gender, age and race vocabularies). Models load on first use,
    once per process. Bad arguments raise :class:`~counterfactual_lab.errors.UserError`
    with a one-line message.
    """

    def __init__(
        self,
        method: str = DEFAULT_METHOD,
        model: str | None = None,
        *,
        device: str = "auto",
        revision: str | None = None,
        steps: int = 20,
        guidance_scale: float = 7.5,
        resolution: int | None = None,
        params: Mapping[str, Any] | None = None,
        batch_size: int = 8,
        judge: str | None = None,
        judge_revision: str | None = None,
        thresholds: Mapping[str, float] | None = None,
        check_attribute: bool = True,
        vocabularies: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        # here, not at the top: it imports torch
        from counterfactual_lab.generation.editor import validate_generation

        generation: dict[str, Any] = {"method": method, "revision": revision, "steps": steps,
                                      "guidance_scale": guidance_scale, "resolution": resolution,
                                      "params": dict(params or {}), "batch_size": batch_size}
        if model is not None:
            generation["model"] = model
        self.generation = _validated(GenerationSection, generation, "CounterfactualGenerator")
        validate_generation(self.generation)
        self.device = device
        self.judge: JudgeSection | None = None
        if judge is not None:
            self.judge = _validated(
                JudgeSection,
                {"model": judge, "revision": judge_revision, "thresholds": dict(thresholds or {}), "check_attribute": check_attribute},
                "CounterfactualGenerator judge",
            )
        self.vocabularies = {k: list(v) for k, v in {**DEFAULT_VOCABULARIES, **dict(vocabularies or {})}.items()}

    def __repr__(self) -> str:
        judge = f", judge={self.judge.model!r}" if self.judge else ""
        return f"CounterfactualGenerator(method={self.generation.method!r}, model={self.generation.model!r}{judge}, device={self.device!r})"

    def generate(
        self,
        image: Any,
        caption: str,
        attribute: str,
        targets: str | Sequence[str] | None = None,
        *,
        source_value: str | None = None,
        seeds_per_target: int = 1,
        seed: int = 0,
    ) -> list[Counterfactual]:
        """Counterfactuals of ``image`` in which ``attribute`` takes each target value.

        ``targets``: a value or a list (default: every value of the attribute's vocabulary
        but the source's). ``source_value``: what the image shows now (default: read from
        the caption; unknown is fine). Each target gets ``seeds_per_target`` candidates,
        seeds ``seed, seed+1, …``; an image depends only on its inputs, seed and model.
        Returns one :class:`Counterfactual` per (target, seed), targets in the order given.
        """

        # here, not at the top: it imports torch
        from counterfactual_lab.generation.editor import make_editor

        if not isinstance(image, Image.Image):
            raise UserError(f"generate() needs a PIL image, got {type(image).__name__}; open files with PIL.Image.open")
        if not isinstance(caption, str):
            raise UserError(f"generate() needs the image's caption as a string, got {type(caption).__name__}")
        if seeds_per_target < 1 or seed < 0:
            raise UserError(f"seeds_per_target must be >= 1 and seed >= 0, got {seeds_per_target} and {seed}")
        source = image.convert("RGB")
        source_value, wanted = self._values(caption, attribute, source_value, targets)
        source_key = image_content_key(source)
        items = self._work_items(source_key, caption, attribute, source_value, wanted, range(seed, seed + seeds_per_target))
        if not items:
            return []
        editor = make_editor(self.generation, self.device)
        images: list[Any] = []
        for start in range(0, len(items), self.generation.batch_size):
            batch = items[start : start + self.generation.batch_size]
            images += editor.edit(batch, [source] * len(batch))
        verdicts = self._judge(items, images, source, source_key) if self.judge else [({}, None, None)] * len(items)
        return [
            Counterfactual(
                image=edited, caption=item.counterfactual_caption, explanation=item.explanation,
                attribute=attribute, source_value=source_value, target_value=item.target_value, seed=item.seed,
                instruction=item.instruction, source_image=source, source_caption=caption,
                scores=scores, passed=passed, drop_reason=reason,
            )
            for item, edited, (scores, passed, reason) in zip(items, images, verdicts)
        ]

    def _values(
        self, caption: str, attribute: str, source_value: str | None, targets: str | Sequence[str] | None
    ) -> tuple[str | None, list[str]]:

        vocabulary = self.vocabularies.get(attribute)
        if source_value is None:
            source_value = detect_value(caption, attribute, vocabulary)
        if targets is None:
            if not vocabulary:
                raise UserError(
                    f"attribute {attribute!r} has no vocabulary: pass targets=[...] or vocabularies={{{attribute!r}: [...]}}"
                )
            targets = [v for v in vocabulary if source_value is None or v.casefold() != source_value.casefold()]
        wanted = [targets] if isinstance(targets, str) else list(targets)
        if not wanted or not all(isinstance(t, str) and t.strip() for t in wanted):
            raise UserError(f"targets must be one or more non-empty values of {attribute!r}, got {targets!r}")
        return source_value, wanted

    def _work_items(self, source_key: str, caption: str, attribute: str, source_value: str | None,
                    targets: list[str], seeds: range) -> list[Any]:

        fingerprint = generator_fingerprint(self.generation.fingerprint_fields())
        items = []
        for target in targets:
            text = rewrite_caption(caption, attribute, source_value, target)
            instruction = edit_instruction(attribute, source_value, target, caption)
            for seed in seeds:
                key = work_item_key(source_key, attribute, source_value, target, seed, text.caption, fingerprint)
                items.append(WorkItem(
                    source_id=source_key[:12], source_key=source_key, source_image_uri=_MEMORY + source_key,
                    caption=caption, attribute=attribute, source_value=source_value, target_value=target, seed=seed,
                    counterfactual_caption=text.caption, explanation=text.explanation, instruction=instruction,
                    generator=fingerprint, content_key=key,
                ))
        return items

    def _judge(self, items: list[Any], images: list[Any], source: Any, source_key: str) -> list[tuple[dict, bool, str | None]]:
        """The pipeline's judge on images held in memory: same scores, same checks, in item order."""

        assert self.judge is not None
        held = {_MEMORY + source_key: source}
        rows = []
        for item, edited in zip(items, images):
            key = image_content_key(edited)  # embeddings are cached by pixels, as the pipeline caches by content
            held[_MEMORY + key] = edited
            rows.append({
                "content_key": key, "source_key": source_key, "source_image_uri": _MEMORY + source_key,
                "image_uri": _MEMORY + key, "caption": item.caption, "counterfactual_caption": item.counterfactual_caption,
                "attribute": item.attribute, "source_value": item.source_value, "target_value": item.target_value,
                "seed": item.seed, "status": "generated", "error": None,
            })
        embedder = ClipEmbedder.load(self.judge.model, self.judge.revision, self.device)
        vocabulary = {item.attribute: self.vocabularies.get(item.attribute, []) for item in items}
        scored = score_candidates(pl.DataFrame(rows), self.judge, embedder, held.__getitem__, vocabulary=vocabulary)
        out = []
        for score in scored:
            reason = verdict(score, self.judge)
            out.append(({name: getattr(score, name) for name in SCORE_NAMES}, reason is None, reason))
        return out


def _validated(model: type, fields: dict[str, Any], what: str) -> Any:


    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(f"{what}: {_first_error(exc)}") from None


# --- runs -----------------------------------------------------------------------------------------


class AuditRun:
    """A finished audit run: its manifest, its tables as polars DataFrames, its report.

    ``metrics``, ``predictions``, ``counterfactuals`` and ``quarantine`` are the run's
    Parquet tables, with a contrastive model under audit ``retrieval`` (every ranking skew and
    NDKL are measured on: score, rank and group per query and image), with a generative model
    ``probes`` (yes/no and rating answers) and ``generations`` (the texts and their scores), and
    once people reviewed it ``review`` (their verdicts beside the judge's); an empty frame for a
    table the run did not write. In Jupyter the run
    shows itself as its models, row accounting and headline findings, with the report's path.
    """

    def __init__(self, tables: RunTables) -> None:
        self._tables = tables

    run_uri = property(lambda self: self._tables.run_uri, doc="Where the run lives (local path or s3:// URI).")
    run_id = property(lambda self: self._tables.run_id)
    manifest = property(lambda self: self._tables.manifest, doc="manifest.json: config, versions, models, accounting.")
    metrics = property(lambda self: self._tables.metrics)
    predictions = property(lambda self: self._tables.predictions)
    counterfactuals = property(lambda self: self._tables.counterfactuals)
    quarantine = property(lambda self: self._tables.quarantine)
    probes = property(lambda self: self._tables.probes, doc="probes.parquet: yes/no and rating answers (generative runs).")
    generations = property(lambda self: self._tables.generations, doc="generations.parquet: texts and scores (generative runs).")
    retrieval = property(lambda self: self._tables.retrieval,
                         doc="retrieval.parquet: each query's ranking, with scores, ranks and groups (contrastive runs).")
    review = property(lambda self: self._tables.review, doc="review.parquet: people's verdicts on counterfactuals (cflab review).")
    report_uri = property(lambda self: self._tables.report_uri, doc="The run's report.html.")

    @property
    def status(self) -> str:
        """``complete``, or ``failed`` when the run marked itself failed."""
        return "failed" if self.manifest.get("status") == "failed" else "complete"

    def findings(self, max_items: int = 8) -> list[str]:
        """The headline findings in plain words, most notable first.

        Where the metrics can be set against their control (``report.findings.assess_findings``),
        the findings called (the interval excludes the control's) come first.
        """
        return _finding_sentences(self.metrics, max_items)[0]

    def headline(self) -> str:
        """The text ``cflab report`` prints for this run."""
        return format_headline(self._tables)

    def __repr__(self) -> str:
        return f"AuditRun(run_id={self.run_id!r}, run_uri={self.run_uri!r}, status={self.status!r}, metrics={self.metrics.height} rows)"

    def _repr_html_(self) -> str:
        manifest = self.manifest
        sentences, summary = _finding_sentences(self.metrics, 8)
        report = self.report_uri
        return render_fragment(
            "_notebook_run.html.j2", tiny=bool(manifest.get("tiny_models")), models=models_line(manifest),
            run_id=self.run_id, failed=self.status == "failed", dataset=(manifest.get("dataset") or {}).get("name"),
            finished=manifest.get("finished_at"), accounting=accounting_lines(manifest), summary=summary,
            sentences=sentences, metrics_rows=self.metrics.height, probes_rows=self.probes.height,
            generations_rows=self.generations.height, retrieval_rows=self.retrieval.height, report=report,
            report_link=Path(report).as_uri() if "://" not in report else None)


def _finding_sentences(metrics: pl.DataFrame, max_items: int) -> tuple[list[str], str | None]:
    """(sentences, a one-line summary or None): called findings first."""
    assessed = assess_findings(metrics)
    if assessed.is_empty():
        return [], None
    ordered = assessed.sort("called", descending=True, maintain_order=True)
    if {"verdict", "diagnostic"} <= set(assessed.columns):
        summary = run_verdict_line(assessed)
    else:
        summary = f"{int(assessed['called'].sum())} of {assessed.height} called"
    return ordered["sentence"].head(max_items).to_list(), summary


def open_run(uri: str, storage_options: Mapping[str, Any] | None = None) -> AuditRun:
    """The finished run at ``uri`` (``OUT/<run_id>``, a local path or ``s3://``).

    Raises :class:`~counterfactual_lab.errors.UserError` when nothing is there, or the run is
    incomplete (no ``manifest.json``) or damaged. ``storage_options``: s3fs options, e.g.
    ``{"endpoint_url": ...}``; the standard AWS variables are read otherwise.
    """
    return AuditRun(read_run(str(uri), dict(storage_options) if storage_options else None))


