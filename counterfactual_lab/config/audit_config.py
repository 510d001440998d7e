"""The audit config: one YAML file says what to audit, how to generate, judge and evaluate.

Every key has a default so a config only states what differs. See the README's
"Audit config" section for the documented keys.
"""

from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from counterfactual_lab.config.dataset_spec import (
    MAX_NAME_CHARS,
    MAX_URI_CHARS,
    SECRET_BLOCK_PATTERN,
    DatasetSpec,
    _first_error,
)
from counterfactual_lab.config.intersections import check_intersections
from counterfactual_lab.config.methods import DEFAULT_METHOD, METHODS, template_fields
from counterfactual_lab.config.skew_protocols import SKEW_PROTOCOL_SOCIALCOUNTERFACTUALS, SkewProtocol, subject_problem
from counterfactual_lab.config.templates import PERSON, uses_person
from counterfactual_lab.config.yaml_files import load_yaml_file
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.storage.redaction import RedactedInJson, redact

# The methods of counterfactual_lab/config/methods.py, as the type of generation.method.
GenerationMethod = Literal[tuple(METHODS)]  # type: ignore[valid-type]
# The dataset "URI" of a run whose prompts come from generation.params.templates: no data is read.
TEMPLATES_URI = "cflab-templates://generation.params.templates"

# Upper bounds on every size a config can set: each keeps one run within what a machine can
# hold (a 10⁶-pixel side asked for 21 GB; 10⁹ bootstrap resamples for 30 GiB). Documented in
# the README's config tables; raise one here only with a measurement.
MAX_RESOLUTION = 2048
MAX_STEPS = 1000
MAX_GUIDANCE_SCALE = 100.0
MAX_SEED = 2**31 - 1
MAX_SEEDS_PER_TARGET = 64
MAX_GENERATION_BATCH = 1024
MAX_PARAMS = 32
MAX_LABELS = 1000
MAX_QUERIES = 1000
MAX_TEXT_CHARS = 1000
MAX_TOP_K = 10_000
MAX_EMBEDDING_BATCH = 4096
MAX_BOOTSTRAP_SAMPLES = 100_000
MAX_ATTRIBUTES = 16
MAX_TARGETS_PER_ATTRIBUTE = 64
MAX_WORKERS = 256
MAX_TASKS_PER_WORKER = 10_000
MAX_INGEST_BATCH_ROWS = 65_536
MAX_RETRIES = 20
MAX_RETRY_DELAY_SECONDS = 3600.0
# The generative audit (counterfactual_lab/auditees): prompts per probe, samples per prompt,
# tokens per answer; a rating scale is read from single digit tokens, so it ends at 9.
MAX_PROBE_PROMPTS = 100
MAX_GENERATION_SAMPLES = 100
MAX_NEW_TOKENS = 4096
MAX_TEMPERATURE = 10.0
MAX_RATING_SCALE = 9

ModelRef = Annotated[str, Field(min_length=1, max_length=MAX_URI_CHARS)]
Revision = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
SecretBlockName = Annotated[str, Field(pattern=SECRET_BLOCK_PATTERN, max_length=MAX_NAME_CHARS)]

# Shared by every section: unknown keys are errors, and no float may be inf or NaN
# (`guidance_scale: .inf` made all-black images that passed as counterfactuals).
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())


class DatasetSection(BaseModel):
    """Either a spec file, inline spec fields, or both (inline fields override the file)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    uri: str | None = Field(None, max_length=MAX_URI_CHARS)
    spec: str | None = Field(None, max_length=MAX_URI_CHARS)

    def resolve(self, base_dir: Path | None = None, uri_override: str | None = None) -> DatasetSpec:
        fields: dict[str, Any] = {}
        if self.spec:
            spec_path = Path(self.spec)
            if not spec_path.is_absolute() and base_dir is not None and not spec_path.exists():
                spec_path = base_dir / spec_path
            fields = DatasetSpec.from_yaml(spec_path).model_dump()
        inline = {k: v for k, v in self.model_dump().items() if k != "spec" and v is not None}
        fields.update(inline)
        if uri_override:
            fields["uri"] = uri_override
        if not fields.get("uri"):
            raise ConfigError("config 'dataset' needs a 'uri' (or a 'spec' file that has one)")
        return DatasetSpec.parse_spec(fields, source="config 'dataset'")


class GenerationSection(BaseModel):
    model_config = STRICT

    method: GenerationMethod = DEFAULT_METHOD
    model: ModelRef = "./.cflab/models/img2img"
    revision: Revision | None = None
    steps: int = Field(20, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(7.5, ge=0, le=MAX_GUIDANCE_SCALE)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="first seed; candidates use seed, seed+1, ...")
    seeds_per_target: int = Field(2, ge=1, le=MAX_SEEDS_PER_TARGET)
    keep_per_target: int = Field(1, ge=1, le=MAX_SEEDS_PER_TARGET)
    batch_size: int = Field(8, ge=1, le=MAX_GENERATION_BATCH)
    resolution: int | None = Field(
        None, ge=8, le=MAX_RESOLUTION, description="square side in pixels; None keeps the source size (rounded to 8)"
    )
    params: dict[str, Any] = Field(default_factory=dict, max_length=MAX_PARAMS)

    @field_validator("params")
    @classmethod
    def _finite_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        for name, value in params.items():
            _require_finite(value, name)
        return params
    # Generate each source's own value too (a reconstruction) and a control per (row, attribute),
    # so counterfactuals are compared with generated images, not with real photos.
    reconstruction: bool = True
    # Generate seeds in rounds and stop a target (a set) once keep_per_target passed the judge;
    # seeds_per_target is then the ceiling (counterfactual_lab/generation/rounds.py). False: every seed at once.
    adaptive: bool = True

    @model_validator(mode="after")
    def _keep_within_seeds(self) -> "GenerationSection":
        if self.keep_per_target > self.seeds_per_target:
            raise ValueError(
                f"keep_per_target ({self.keep_per_target}) cannot exceed seeds_per_target ({self.seeds_per_target})"
            )
        return self

    def fingerprint_fields(self) -> dict[str, Any]:
        """What identifies the generator in the config: every key that changes the output pixels.

        The content keys add the model's identity (its files' sha256) and what this machine
        changes: device type, dtype and package versions (``devices.generation_precision``).
        """
        return {
            "method": self.method,
            "model": self.model,
            "revision": self.revision,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "resolution": self.resolution,
            # Not the text2image templates (each member's key holds its own prompt) nor the
            # inpainting mask spec (each item's key holds its mask's content key).
            "params": {k: v for k, v in sorted(self.params.items()) if k not in ("templates", "mask")},
            # A method that inverts each source once seeds that inversion with this seed, so it
            # changes the pixels of every item; the others seed per item (the item's own seed).
            **({"seed": self.seed} if METHODS[self.method].inverts else {}),
        }


class JudgeThresholds(BaseModel):
    """Cosine similarities, so each lies in [-1, 1]; -1 lets every candidate through."""

    model_config = STRICT

    text: float = Field(0.2, ge=-1, le=1)
    direction: float = Field(0.2, ge=-1, le=1)
    image: float = Field(0.7, ge=-1, le=1)


class DriftThresholds(BaseModel):
    """``judge.max_drift``: how much off-target change the audit accepts (docs/metrics.md, "Confound
    diagnostics"). ``brightness`` and ``colour`` (each of red, green, blue) are mean channel values on
    [0, 1] (0.01 = 2.55 grey levels), measured outside the person; ``attribute`` is the judge's
    zero-shot probability of another protected attribute's value; ``outside_mask`` is the mean
    absolute pixel change outside the person beyond the control's."""

    model_config = STRICT

    brightness: float = Field(0.01, gt=0, le=1)
    colour: float = Field(0.01, gt=0, le=1)
    attribute: float = Field(0.05, gt=0, le=1)
    outside_mask: float = Field(0.02, gt=0, le=1)


class JudgeSection(BaseModel):
    model_config = STRICT

    model: ModelRef = "./.cflab/models/clip"
    revision: Revision | None = None
    thresholds: JudgeThresholds = Field(default_factory=JudgeThresholds)
    check_attribute: bool = True
    attribute_prompt: Text = "a photo of a {value} person"
    # Off-target drift (counterfactual_lab/judge/drift.py): null turns the drift readings, their
    # metric rows and the off_target_drift drop off.
    max_drift: DriftThresholds | None = Field(default_factory=DriftThresholds)
    # Other protected attributes whose zero-shot margins the drift reads; None: the vocabulary's
    # protected attributes (gender, age, race) that the run does not audit.
    drift_attributes: list[Text] | None = Field(None, max_length=MAX_ATTRIBUTES)

    @field_validator("attribute_prompt")
    @classmethod
    def _one_value_placeholder(cls, prompt: str) -> str:
        return _template(prompt, "value")


# What the model under audit is (counterfactual_lab/auditees): a contrastive image-text model
# (CLIP, SigLIP), a generative chat VLM (image-text-to-text) or a captioner (image-to-text).
AuditKind = Literal["contrastive", "vlm", "captioner"]
# The probe prompts' config keys that only a generative model can answer.
GENERATIVE_KEYS = ("choice_prompt", "yes_no", "ratings", "generate.prompts", "toxicity_model", "unclear_option",
                   "sentiment_model", "text_embedder")
# ... and those a captioner is not asked: it is audited through its captions (audit.generate).
QUESTION_KEYS = ("choice_prompt", "yes_no", "ratings", "unclear_option")
# audit.unclear_option: true offers this word.
DEFAULT_UNCLEAR_OPTION = "unclear"


class AuditGenerateSection(BaseModel):
    """Open-ended generations: each prompt, ``samples`` times per image, scored afterwards."""

    model_config = STRICT

    prompts: list[Text] = Field(default_factory=list, max_length=MAX_PROBE_PROMPTS)
    samples: int = Field(1, ge=1, le=MAX_GENERATION_SAMPLES)
    # 0 is greedy decoding (one answer per prompt, so samples must be 1).
    temperature: float = Field(0.7, ge=0, le=MAX_TEMPERATURE)
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="base of the per-(image, prompt, sample) seeds")

    @field_validator("prompts")
    @classmethod
    def _distinct_templates(cls, prompts: list[str]) -> list[str]:
        return [_PROMPT_CHECKS["generate"](p) for p in _distinct(prompts)]

    @model_validator(mode="after")
    def _greedy_has_one_sample(self) -> "AuditGenerateSection":
        if self.temperature == 0 and self.samples > 1:
            raise ValueError(
                f"temperature 0 is greedy decoding: every sample would be the same text; set samples: 1 "
                f"or a temperature > 0 (got samples: {self.samples})"
            )
        return self


# The scales audit.min_effect can set (counterfactual_lab/metrics/error_control.py: min_effect_for).
MinEffectScale = Literal["probability", "rating", "words", "lexicon"]
# What changes between the two sides of a pair (docs/metrics.md, "Which modality carries the gap"): the
# image (the person word stays the source's), the text (the reconstruction with the target's word), or both.
Modality = Literal["image", "text", "both"]


class AuditSection(BaseModel):
    model_config = STRICT

    # None: read from the model's config.json (counterfactual_lab/evaluate/auditees/kinds.py).
    kind: AuditKind | None = None
    model: ModelRef = "./.cflab/models/clip"
    revision: Revision | None = None
    # Zero-shot classification needs at least two classes to choose between.
    labels: list[Text] = Field(default_factory=lambda: ["doctor", "nurse"], min_length=2, max_length=MAX_LABELS)
    prompt: Text = "a photo of a {label}"
    queries: list[Text] = Field(default_factory=lambda: ["a photo of a doctor"], max_length=MAX_QUERIES)
    top_k: int = Field(10, ge=1, le=MAX_TOP_K)
    # Which ranking retrieval skew and NDKL are measured on (config/skew_protocols.py, docs/metrics.md).
    skew_protocol: SkewProtocol = "geyik"
    batch_size: int = Field(32, ge=1, le=MAX_EMBEDDING_BATCH)
    bootstrap_samples: int = Field(1000, ge=50, le=MAX_BOOTSTRAP_SAMPLES)
    bootstrap_seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the bootstrap resamples (docs/metrics.md)")
    confidence: float = Field(0.95, gt=0, lt=1)
    min_group_size: int = Field(
        5, ge=1, description="groups with fewer images are left out of selection rate, parity and equalized odds; "
                             "rows on fewer source images (an intersection's cell too) get no interval"
    )
    # The smallest difference called a finding (docs/metrics.md, "When a finding is called"): a number
    # sets the probability scale; a mapping sets any of probability, rating, words, lexicon.
    min_effect: float | dict[MinEffectScale, float] = Field(0.01)
    # fwer: Holm's step-down (the family-wise error); fdr: Benjamini–Hochberg (the false discovery rate).
    error_control: Literal["fwer", "fdr"] = "fwer"
    # Outcomes that must not depend on the attribute (a contrastive model: "A | B", P(A) over the two
    # texts; a vlm: yes/no questions). None: the defaults of the model's kind; []: none.
    negative_controls: list[Text] | None = Field(None, max_length=MAX_PROBE_PROMPTS)
    # -- generative models under audit (README "Generative VLMs under audit") ---------------
    # How a prompt reaches the model: "chat" through the processor's chat template, "raw" as
    # text with {image} where the image token goes; "auto": chat when the processor has a template.
    prompt_format: Literal["auto", "chat", "raw"] = "auto"
    # Multiple choice over `labels`: the likelihood of each label's tokens after this prompt.
    choice_prompt: Text | None = None
    yes_no: list[Text] = Field(default_factory=list, max_length=MAX_PROBE_PROMPTS)
    ratings: list[Text] = Field(default_factory=list, max_length=MAX_PROBE_PROMPTS)
    rating_scale: int = Field(5, ge=2, le=MAX_RATING_SCALE)
    generate: AuditGenerateSection = Field(default_factory=AuditGenerateSection)
    toxicity_model: ModelRef | None = None
    toxicity_revision: Revision | None = None
    # A generation counts as toxic (toxicity_rate) when its toxic probability is at least this.
    toxicity_threshold: float = Field(0.5, ge=0, le=1)
    # A word-list file (YAML: category -> words); None: the project's default lexicon.
    lexicon: str | None = Field(None, min_length=1, max_length=MAX_URI_CHARS)
    # -- which modality carries a gap (docs/metrics.md, "Which modality carries the gap") -------------
    # image: the counterfactual image, the source's {person} word; text: the reconstruction, the target's
    # word; both: the counterfactual image with the target's word. text and both need {person} in a probe.
    modalities: list[Modality] = Field(default_factory=lambda: ["image"], min_length=1, max_length=3)
    # -- phrasing robustness, "unclear" answers, how much answers change (docs/metrics.md) ----
    # Other phrasings of a configured prompt (audit.prompt, choice_prompt, a yes_no question, a
    # ratings prompt, a generate prompt): prompt -> [alternatives]. Each prompt is asked in every
    # phrasing; metrics per phrasing and pooled (docs/metrics.md, "Phrasing robustness").
    phrasings: dict[Text, list[Text]] = Field(default_factory=dict, max_length=MAX_PROBE_PROMPTS)
    # An "unclear" answer the yes/no and choice probes offer (its word; true: "unclear"); null: none.
    unclear_option: Text | None = None
    # A sentence embedder (AutoModel, mean pooling) for answer_change's embedding cosine, and a
    # sentiment classifier (labels positive/negative) for the sentiment gap; null: not measured.
    text_embedder: ModelRef | None = None
    text_embedder_revision: Revision | None = None
    sentiment_model: ModelRef | None = None
    sentiment_revision: Revision | None = None

    @field_validator("labels", "queries")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        return _distinct(values)

    @field_validator("modalities")
    @classmethod
    def _distinct_modalities(cls, values: list[str]) -> list[str]:
        return _distinct(values)
    @field_validator("unclear_option", mode="before")
    @classmethod
    def _unclear_word(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return DEFAULT_UNCLEAR_OPTION if value else None
        return value.strip() if isinstance(value, str) else value

    @field_validator("min_effect")
    @classmethod
    def _non_negative_effects(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        for scale, threshold in ({"probability": value} if not isinstance(value, dict) else value).items():
            if not math.isfinite(threshold) or threshold < 0:
                raise ValueError(f"min_effect {scale}: {threshold} must be a finite number >= 0")
        return value

    @field_validator("negative_controls")
    @classmethod
    def _distinct_controls(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else _distinct(values)

    @field_validator("prompt")
    @classmethod
    def _one_label_placeholder(cls, prompt: str) -> str:
        return _PROMPT_CHECKS["prompt"](prompt)

    @field_validator("yes_no")
    @classmethod
    def _question_templates(cls, prompts: list[str]) -> list[str]:
        return [_PROMPT_CHECKS["yes_no"](p) for p in _distinct(prompts)]

    @field_validator("ratings")
    @classmethod
    def _rating_templates(cls, prompts: list[str]) -> list[str]:
        return [_PROMPT_CHECKS["rating"](p) for p in _distinct(prompts)]

    @field_validator("choice_prompt")
    @classmethod
    def _choice_template(cls, prompt: str | None) -> str | None:
        return None if prompt is None else _PROMPT_CHECKS["choice"](prompt)

    def person_templates(self) -> list[str]:
        """The probe and label templates with ``{person}`` (docs/metrics.md, "Which modality carries the gap")."""
        templates = [self.prompt, self.choice_prompt, *self.yes_no, *self.ratings, *self.generate.prompts,
                     *(text for alternatives in self.phrasings.values() for text in alternatives)]
        return [t for t in templates if t is not None and uses_person(t)]

    @model_validator(mode="after")
    def _word_modalities_need_a_person(self) -> "AuditSection":
        changes_word = [m for m in self.modalities if m != "image"]
        if changes_word and not self.person_templates():
            raise ValueError(
                f"audit.modalities lists {changes_word[0]!r}, which changes the {{person}} word of the prompt, but no "
                "probe or label template has {person}: write it in audit.prompt (e.g. 'a photo of a {person} who is a "
                "{label}'), audit.choice_prompt, audit.yes_no, audit.ratings or audit.generate.prompts"
            )
        return self

    @model_validator(mode="after")
    def _queries_name_their_subject(self) -> "AuditSection":
        if self.skew_protocol == SKEW_PROTOCOL_SOCIALCOUNTERFACTUALS:
            problem = subject_problem(self.queries, self.labels)
            if problem:
                raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _phrasings_of_configured_prompts(self) -> "AuditSection":
        kinds = self.prompt_kinds()
        seen = set(kinds)
        for prompt, alternatives in self.phrasings.items():
            if prompt not in kinds:
                raise ValueError(f"phrasings: {prompt!r} is not a configured prompt (audit.prompt, choice_prompt, "
                                 "a yes_no question, a ratings prompt or a generate prompt); key each list by the prompt as written")
            if not alternatives:
                raise ValueError(f"phrasings: {prompt!r} lists no other phrasing")
            if kinds[prompt] in ("prompt", "choice") and any("@" in label for label in self.labels):
                raise ValueError(f"phrasings of {prompt!r}: a label's answers in phrasing k sit in the column "
                                 "score_<label>@k, so no label may contain '@'")
            if len(alternatives) >= MAX_PROBE_PROMPTS:
                raise ValueError(f"phrasings: {prompt!r} lists {len(alternatives)} phrasings, at most {MAX_PROBE_PROMPTS - 1}")
            for text in alternatives:
                if text in seen:
                    raise ValueError(f"phrasings: {text!r} is listed twice (as a prompt or another phrasing); "
                                     "each phrasing is asked once")
                seen.add(text)
                _PROMPT_CHECKS[kinds[prompt]](text)
        return self

    @model_validator(mode="after")
    def _unclear_is_offered(self) -> "AuditSection":
        word = self.unclear_option
        if word is None:
            return self
        if not self.yes_no and self.choice_prompt is None:
            raise ValueError(f"unclear_option {word!r} is an answer of the yes/no and choice probes: set audit.yes_no or "
                             "audit.choice_prompt, or drop unclear_option")
        taken = {w.casefold() for w in (*self.labels, "yes", "no")}
        if word.casefold() in taken:
            raise ValueError(f"unclear_option {word!r} is already an answer (a label, yes or no); choose another word")
        asked = [p for q in self.yes_no for p in self.phrasings_of(q)]
        if self.choice_prompt is not None:
            asked += [p for p in self.phrasings_of(self.choice_prompt) if "{options}" not in p]
        for prompt in asked:
            if word.casefold() not in prompt.casefold():
                raise ValueError(f"{prompt!r} does not offer unclear_option {word!r}: say it in the question "
                                 f"(e.g. '... Answer yes, no or {word}.'); a choice prompt with {{options}} lists it itself")
        return self

    def prompt_kinds(self) -> dict[str, str]:
        """Every configured prompt → its kind (``prompt``, ``choice``, ``yes_no``, ``rating``, ``generate``)."""
        kinds = {self.prompt: "prompt"}
        if self.choice_prompt is not None:
            kinds[self.choice_prompt] = "choice"
        for kind, prompts in (("yes_no", self.yes_no), ("rating", self.ratings), ("generate", self.generate.prompts)):
            kinds.update({p: kind for p in prompts})
        return kinds

    def phrasings_of(self, prompt: str) -> list[str]:
        """``prompt`` first, then its other phrasings (``audit.phrasings``)."""
        return [prompt, *self.phrasings.get(prompt, [])]

    @model_validator(mode="after")
    def _probes_fit_the_kind(self) -> "AuditSection":
        if self.kind is not None:
            problem = self.kind_problem(self.kind)
            if problem:
                raise ValueError(problem)
        return self

    def generative_keys_set(self) -> list[str]:
        """The probe keys of :data:`GENERATIVE_KEYS` this config sets."""
        set_keys = {
            "choice_prompt": self.choice_prompt is not None, "yes_no": bool(self.yes_no),
            "ratings": bool(self.ratings), "generate.prompts": bool(self.generate.prompts),
            "toxicity_model": self.toxicity_model is not None, "unclear_option": self.unclear_option is not None,
            "sentiment_model": self.sentiment_model is not None, "text_embedder": self.text_embedder is not None,
        }
        return [key for key in GENERATIVE_KEYS if set_keys[key]]

    def kind_problem(self, kind: str) -> str | None:
        """Why this config's probes cannot run on a model of ``kind``; None when they can."""
        keys = self.generative_keys_set()
        if kind == "contrastive" and keys:
            return (f"audit.{keys[0]} needs a generative model under audit (audit.kind: vlm or captioner); "
                    f"a contrastive model ({self.model}) only scores labels and queries")
        if kind == "captioner":
            questions = [key for key in QUESTION_KEYS if key in keys]
            if questions:
                return (f"audit.{questions[0]} asks a question, and a captioner ({self.model}) is audited through its "
                        "captions: list audit.generate.prompts ({image} alone for an unconditional caption), or use audit.kind: vlm")
        if kind == "captioner" and "generate.prompts" not in keys:
            return f"audit.kind captioner needs audit.generate.prompts: a captioner ({self.model}) is audited through its captions"
        if kind != "contrastive" and self.prompt in self.phrasings:
            return (f"audit.phrasings lists other phrasings of audit.prompt {self.prompt!r}, which only a contrastive "
                    f"model reads; phrase audit.choice_prompt instead for a {kind}")
        if kind == "vlm" and not keys:
            return (f"audit.kind {kind} needs at least one probe: audit.choice_prompt, audit.yes_no, "
                    "audit.ratings or audit.generate.prompts")
        return None


class OutputSection(RedactedInJson, BaseModel):
    model_config = STRICT

    uri: str = Field("./out", min_length=1, max_length=MAX_URI_CHARS)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    # A Prefect Secret block holding a JSON object of storage options, merged under
    # storage_options by the flows (see README "S3"); the library never reads it.
    storage_options_secret: SecretBlockName | None = None


class RuntimeSection(BaseModel):
    model_config = STRICT

    task_runner: Literal["threads", "ray"] = "threads"
    max_workers: int = Field(4, ge=1, le=MAX_WORKERS)
    ray_address: str | None = Field(None, max_length=MAX_URI_CHARS)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    ingest_batch_rows: int = Field(1024, ge=1, le=MAX_INGEST_BATCH_ROWS)
    max_invalid_fraction: float = Field(0.05, ge=0, le=1)
    # A run with a larger share of failed work items is published but marked failed (exit 1).
    max_failed_fraction: float = Field(0.1, ge=0, le=1)
    retries: int = Field(3, ge=0, le=MAX_RETRIES)
    retry_delay_seconds: float = Field(2.0, ge=0, le=MAX_RETRY_DELAY_SECONDS)
    # How many tasks each worker gets per fan-out (generation, evaluation): a task holds
    # ceil(items / (max_workers × tasks_per_worker)) items, at least one model batch, so
    # orchestration costs a fixed number of task runs whatever the audit's size.
    tasks_per_worker: int = Field(16, ge=1, le=MAX_TASKS_PER_WORKER)


class ReviewSection(BaseModel):
    """What people's labels on the run's counterfactuals do (``cflab review``; README "People check
    the counterfactuals"). Not part of the run id: labels arrive after a run."""

    model_config = STRICT

    # Leave the sets people rejected out of the audit's metrics (as if the judge had dropped them).
    exclude_rejected: bool = False


AttributeTargets = Annotated[list[Text], Field(min_length=1, max_length=MAX_TARGETS_PER_ATTRIBUTE)]


class AuditConfig(RedactedInJson, BaseModel):
    """The whole audit config. Its JSON dump has secrets redacted (see :mod:`counterfactual_lab.storage.redaction`)."""

    model_config = STRICT

    # Required, except for text2image-sets with params.templates (which reads no dataset).
    dataset: DatasetSection | None = None
    attributes: dict[Text, AttributeTargets] = Field(
        default_factory=lambda: {"gender": ["female", "male"]}, min_length=1, max_length=MAX_ATTRIBUTES
    )
    generation: GenerationSection = Field(default_factory=GenerationSection)
    judge: JudgeSection = Field(default_factory=JudgeSection)
    audit: AuditSection = Field(default_factory=AuditSection)
    output: OutputSection = Field(default_factory=OutputSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)
    review: ReviewSection = Field(default_factory=ReviewSection)
    # attributes.intersections ([[race, gender], ...]; counterfactual_lab/config/intersections.py): written
    # inside `attributes` and dumped back there, so `attributes` stays attribute -> values everywhere else.
    intersections: list[list[Text]] = Field(default_factory=list, max_length=MAX_ATTRIBUTES)
    # Where relative paths in the config resolve; set by from_yaml.
    base_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _intersections_from_attributes(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("attributes"), dict) and "intersections" in raw["attributes"]:
            if raw.get("intersections"):
                raise ValueError("give intersections once, as attributes.intersections")
            attributes = dict(raw["attributes"])
            raw = {**raw, "attributes": attributes, "intersections": attributes.pop("intersections") or []}
        return raw

    @model_validator(mode="after")
    def _intersections_of_attributes(self) -> "AuditConfig":
        self.intersections = check_intersections(self.intersections, list(self.attributes))
        return self

    @model_serializer(mode="wrap")
    def _redacted_in_json(self, handler: Any, info: SerializationInfo) -> Any:
        """As :class:`RedactedInJson`, with ``intersections`` dumped where a config writes it (in
        ``attributes``; left out when there are none, so a config without them dumps as before)."""
        data = handler(self)
        if isinstance(data, dict) and "intersections" in data:
            intersections = data.pop("intersections")
            if intersections and isinstance(data.get("attributes"), dict):
                data["attributes"] = {**data["attributes"], "intersections": intersections}
        return redact(data) if info.mode_is_json() else data

    @classmethod
    def from_yaml(cls, path: str | Path) -> "AuditConfig":
        path = Path(path)
        raw = load_yaml_file(path, "config")
        if not isinstance(raw, dict):
            raise ConfigError(f"config {path} must be a mapping of sections (dataset, generation, ...)")
        raw.setdefault("base_dir", str(path.resolve().parent))
        return cls.parse_config(raw, source=f"config {path}")

    @classmethod
    def parse_config(cls, raw: dict[str, Any], source: str = "config") -> "AuditConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source} must be a mapping of sections (dataset, generation, ...)")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{source} is invalid: {_first_error(exc, cls)}") from None

    def prompts_may_come_from_templates(self) -> bool:
        """True when the method can make its prompts from caption templates (``text2image-sets``)."""
        return "templates" in METHODS[self.generation.method].params

    def prompts_from_templates(self) -> bool:
        """True when the method makes its prompts from ``generation.params.templates`` and they are
        set (``text2image-sets``): no dataset is read (see :mod:`counterfactual_lab.generation.text2image_sets`)."""
        return self.prompts_may_come_from_templates() and self.generation.params.get("templates") is not None

    def dataset_spec(self, uri_override: str | None = None) -> DatasetSpec:
        """The dataset to audit: the config's, or ``uri_override`` (a dataset URI, or a spec YAML file)."""
        base = Path(self.base_dir) if self.base_dir else None
        if self.prompts_from_templates():
            spec = self._template_spec(uri_override)
        elif self.dataset is None and not uri_override:
            raise ConfigError(
                "config 'dataset' is required: a spec file or a uri (only text2image-sets with "
                "generation.params.templates reads no dataset)"
            )
        elif uri_override and uri_override.endswith((".yaml", ".yml")):
            spec = DatasetSpec.from_yaml(uri_override)
        else:
            spec = (self.dataset or DatasetSection()).resolve(base, uri_override)
        for attribute, targets in self.attributes.items():
            for value in targets:
                if spec.canonical_value(attribute, value) is None:
                    raise ConfigError(
                        f"attributes.{attribute}: {value!r} is not in the vocabulary {spec.vocabulary(attribute)}"
                    )
        return spec

    def _template_spec(self, uri_override: str | None) -> DatasetSpec:
        """The spec of a template-only run: no data, the ``dataset`` section's name and vocabularies."""
        if uri_override:
            raise ConfigError(
                "generation.params.templates makes the prompts, so no dataset is read; drop --dataset "
                "(or the templates, to make the sets from that dataset's captions)"
            )
        fields: dict[str, Any] = {"name": self.generation.method, "uri": TEMPLATES_URI}
        if self.dataset is not None:
            given = self.dataset.model_dump(exclude_none=True)
            if given.get("spec") or given.get("uri", TEMPLATES_URI) != TEMPLATES_URI:
                raise ConfigError(
                    "config 'dataset': generation.params.templates makes the prompts, so no dataset is read; "
                    "keep only dataset.name (and vocabularies), or drop the templates to use the dataset's captions"
                )
            fields.update({k: v for k, v in given.items() if k in ("name", "vocabularies")})
        return DatasetSpec.parse_spec(fields, source="config 'dataset'")


def _require_finite(value: Any, where: str) -> None:
    """Raise ValueError naming ``where`` when ``value`` holds an inf or NaN anywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number")
    if isinstance(value, dict):
        for key, inner in value.items():
            _require_finite(inner, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, inner in enumerate(value):
            _require_finite(inner, f"{where}[{index}]")


def _distinct(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice")
        seen.add(value)
    return values


def _probe_template(prompt: str, allowed: tuple[str, ...]) -> str:
    """``prompt`` if its only placeholders are ``allowed`` (each at most once), each plain
    (:func:`~counterfactual_lab.config.methods.template_fields`); ValueError otherwise."""
    names = ", ".join("{" + a + "}" for a in allowed)
    fields = _plain_fields(prompt, names)
    for name in fields:
        if name not in allowed:
            raise ValueError(f"{prompt!r} uses {{{name}}}; a probe prompt may use only {names} (write {{{{ and }}}} for literal braces)")
    for name in set(fields):
        if _occurrences(prompt, name) > 1:
            raise ValueError(f"{prompt!r} uses {{{name}}} more than once")
    return prompt


def _template(prompt: str, placeholder: str, optional: tuple[str, ...] = ()) -> str:
    """``prompt`` if it has ``{placeholder}`` and no other placeholder but ``optional`` ones, each plain: no
    attribute (``{label.__class__}``), index (``{label[0]}``), conversion (``{label!r}``) or format spec
    (``{label:>999999999}``); ValueError otherwise."""
    allowed = " and ".join("{" + p + "}" for p in (placeholder, *optional))
    fields = _plain_fields(prompt, allowed)
    if placeholder not in fields:
        raise ValueError(f"{prompt!r} must contain {{{placeholder}}}")
    others = [name for name in fields if name != placeholder and name not in optional]
    if others:
        raise ValueError(f"{prompt!r} may use only {allowed}, not {{{others[0]}}} (write {{{{ and }}}} for literal braces)")
    return prompt


# How each kind of prompt is checked: its field's validator and its other phrasings read this.
_PROMPT_CHECKS = {
    "prompt": lambda p: _template(p, "label", optional=(PERSON,)),
    "choice": lambda p: _probe_template(p, ("image", "options", PERSON)),
    "yes_no": lambda p: _probe_template(p, ("image", PERSON)),
    "rating": lambda p: _probe_template(p, ("image", PERSON)),
    "generate": lambda p: _probe_template(p, ("image", PERSON)),
}


def _plain_fields(prompt: str, allowed: str) -> list[str]:
    try:
        return template_fields(prompt)
    except ValueError as exc:
        raise ValueError(f"{prompt!r}: {str(exc).replace('a plain attribute name such as {gender}', 'plain: ' + allowed)} "
                         "(write {{ and }} for literal braces)") from None


def _occurrences(prompt: str, name: str) -> int:
    return sum(1 for _, field, _, _ in string.Formatter().parse(prompt) if field == name)
