"""The model under audit's part of the preflight (:func:`counterfactual_lab.runs.preflight.check_audit`).

Before Prefect starts, one line each: the kind of model (``audit.kind``, or read from its config)
fits the probes the config lists; for a generative model, every prompt gives the model a place
for its image (:func:`counterfactual_lab.evaluate.auditees.prompts.check_prompt`, run through the real
processor with a blank image) and its tokenizer can say yes, no and each rating digit in one
token; the lexicon file exists and parses; the toxicity model is a local safetensors text
classifier with a toxic label. Only configs and tokenizer files are read, no weights. A hub model
that is not in the local cache cannot be read offline and is left to loading time.
"""

from __future__ import annotations

import logging
from typing import Any

from counterfactual_lab.errors import ConfigError, UserError
from counterfactual_lab.models.image_processors import prefer_pil_image_processors
from counterfactual_lab.models.safety import check_model_reference, is_local_model

logger = logging.getLogger(__name__)


def check_auditee(config: Any) -> str:
    """Check ``config.audit`` (and its lexicon and toxicity model); returns the resolved kind."""
    # here, not at the top: it imports polars
    from counterfactual_lab.evaluate.auditees.kinds import CONTRASTIVE, resolve_kind

    audit = config.audit
    if audit.lexicon is not None:
        # here, not at the top: it imports polars
        from counterfactual_lab.evaluate.auditees.lexicon import load_lexicon

        load_lexicon(audit.lexicon, config.base_dir)
    kind = resolve_kind(audit)
    if audit.kind is not None:
        _check_declared_kind(audit)
    problem = audit.kind_problem(kind)
    if problem:
        raise ConfigError(problem if audit.kind is not None else f"{problem} (audit.model is a {kind} model)")
    check_negative_controls(audit, kind)
    if kind == CONTRASTIVE:
        return kind
    processor = _processor(audit.model, audit.revision)
    if processor is not None:
        _check_prompts(processor, audit)
    if audit.toxicity_model is not None:
        check_text_classifier(audit.toxicity_model, audit.toxicity_revision)
    if audit.sentiment_model is not None:
        check_text_classifier(audit.sentiment_model, audit.sentiment_revision, key="audit.sentiment_model")
    if audit.text_embedder is not None:
        check_text_encoder(audit.text_embedder, audit.text_embedder_revision)
    return kind


def check_negative_controls(audit: Any, kind: str) -> None:
    """``audit.negative_controls`` in the form its kind reads: "A | B" for a contrastive model, a
    yes/no question for a vlm, none for a captioner (it answers no questions)."""
    # here, not at the top: it imports polars
    from counterfactual_lab.evaluate.pool import negative_control_texts

    entries = audit.negative_controls or []
    if kind == "captioner" and entries:
        raise ConfigError(f"audit.negative_controls: a captioner ({audit.model}) answers no questions; audit it through "
                          "its captions (audit.generate.prompts) and set audit.negative_controls: []")
    if kind == "contrastive":
        for index, entry in enumerate(entries):
            try:
                a, _ = negative_control_texts(entry)
            except ValueError as exc:
                raise ConfigError(f"audit.negative_controls[{index}]: {exc}") from None
            if a in audit.labels:
                raise ConfigError(f"audit.negative_controls[{index}]: {a!r} is also one of audit.labels; a negative "
                                  "control must be an outcome the audit does not ask about")


def _check_declared_kind(audit: Any) -> None:
    """``audit.kind`` must agree with the model's config where it can be read: contrastive or not."""
    # here, not at the top: it imports polars
    from counterfactual_lab.evaluate.auditees.kinds import CONTRASTIVE, infer_kind

    try:
        found = infer_kind(audit.model, audit.revision)
    except ConfigError:
        return  # unreadable here (a hub model not cached); loading will tell
    if (found == CONTRASTIVE) != (audit.kind == CONTRASTIVE):
        raise ConfigError(f"audit.kind is {audit.kind}, but audit.model {audit.model} is a {found} model (its config.json says so)")


def _processor(model: str, revision: str | None) -> Any | None:
    # here, not at the top: it imports transformers
    from transformers import AutoProcessor


    prefer_pil_image_processors()
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if not is_local_model(model):
        kwargs.update(revision=revision, local_files_only=True)
    try:
        return AutoProcessor.from_pretrained(model, **kwargs)
    except OSError:
        if is_local_model(model):
            raise ConfigError(f"audit.model {model}: no processor (processor_config.json, tokenizer) to read prompts with") from None
        logger.info("audit.model %s is not in the local cache: its prompts are checked when it loads", model)
        return None


def _check_prompts(processor: Any, audit: Any) -> None:
    # here, not at the top: it imports polars
    from counterfactual_lab.evaluate.auditees.answers import YES_NO_ANSWERS, answer_token_ids, rating_answers

    # here, not at the top: it imports polars
    from counterfactual_lab.evaluate.auditees.prompts import check_prompt, resolve_format

    prompt_format = resolve_format(processor, audit.prompt_format)
    templates = [("audit.choice_prompt", audit.choice_prompt)] if audit.choice_prompt is not None else []
    templates += [(f"audit.yes_no[{i}]", p) for i, p in enumerate(audit.yes_no)]
    templates += [(f"audit.negative_controls[{i}]", p) for i, p in enumerate(audit.negative_controls or [])]
    templates += [(f"audit.ratings[{i}]", p) for i, p in enumerate(audit.ratings)]
    templates += [(f"audit.generate.prompts[{i}]", p) for i, p in enumerate(audit.generate.prompts)]
    templates += [(f"audit.phrasings[{prompt!r}][{i}]", p) for prompt, alternatives in audit.phrasings.items()
                  if prompt != audit.prompt for i, p in enumerate(alternatives)]
    for key, template in templates:
        check_prompt(processor, prompt_format, template, key, audit.model)
    tokenizer = getattr(processor, "tokenizer", processor)
    unclear = [audit.unclear_option] if audit.unclear_option is not None else []
    for key, answers in (("audit.yes_no", list(YES_NO_ANSWERS) + unclear), ("audit.ratings", rating_answers(audit.rating_scale))):
        if getattr(audit, key.split(".")[1]):
            try:
                answer_token_ids(tokenizer, answers)
            except UserError as exc:
                raise ConfigError(f"{key}: {exc}") from None


def check_text_encoder(model: str, revision: str | None, key: str = "audit.text_embedder") -> None:
    """``audit.text_embedder`` must name a model whose config can be read (a local folder: its config.json)."""
    # here, not at the top: it imports transformers
    from transformers import AutoConfig

    check_model_reference(key, model)
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if not is_local_model(model):
        kwargs.update(revision=revision, local_files_only=True)
    try:
        AutoConfig.from_pretrained(model, **kwargs)
    except (OSError, ValueError):
        if is_local_model(model):
            raise ConfigError(f"{key} {model}: no readable config.json") from None


def check_text_classifier(model: str, revision: str | None, key: str = "audit.toxicity_model") -> None:
    """``audit.toxicity_model`` (``key``) must be a safetensors, code-free text classifier with a toxic
    label; ``audit.sentiment_model`` one with a positive and a negative label."""
    # here, not at the top: it imports transformers
    from transformers import AutoConfig

    # here, not at the top: it imports transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    # here, not at the top: it imports polars, torch
    from counterfactual_lab.evaluate.auditees.text_models import sentiment_labels

    # here, not at the top: it imports polars, torch
    from counterfactual_lab.evaluate.auditees.toxicity import toxic_label

    check_model_reference(key, model)
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if not is_local_model(model):
        kwargs.update(revision=revision, local_files_only=True)
    try:
        config = AutoConfig.from_pretrained(model, **kwargs)
    except (OSError, ValueError):
        if is_local_model(model):
            raise ConfigError(f"{key} {model}: no readable config.json") from None
        return
    architectures = list(getattr(config, "architectures", None) or [])
    classifier = any(a.endswith("ForSequenceClassification") for a in architectures) or (
        not architectures and config.model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
        and bool(getattr(config, "id2label", None))
    )
    if not classifier:
        raise ConfigError(
            f"{key} {model} is not a text classifier (its config names {architectures or config.model_type}); "
            "give a transformers text-classification model (…ForSequenceClassification) with a "
            + ("toxic label" if key == "audit.toxicity_model" else "positive and a negative label")
        )
    if key == "audit.toxicity_model":
        toxic_label(config.id2label, model)
    else:
        sentiment_labels(config.id2label, model)
