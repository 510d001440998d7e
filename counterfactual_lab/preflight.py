"""Everything about an audit that can be checked before Prefect starts, so a bad config fails
in seconds with one line and never leaves a run folder.

:func:`check_audit` runs the checks cheapest first: the dataset spec and its vocabularies,
``generation.params`` by name, range and "can this make an image" (no torch), each model
reference (a local folder must exist, hold safetensors and ship no code; nothing is loaded),
the device, and last the params against the installed diffusers pipeline's call signature
(imports the pipeline class, reads no weights), and the model under audit's kind, prompts,
lexicon and toxicity model (:mod:`counterfactual_lab.auditees.preflight`). Data is not read here: listing a dataset or
an S3 bucket is the flow's first step.
"""

from __future__ import annotations

from pathlib import Path

from counterfactual_lab.config import AuditConfig
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.spec import DatasetSpec


def check_config(config: AuditConfig, dataset_uri: str | None = None) -> DatasetSpec:
    """The checks that read nothing but the config and cost milliseconds: the dataset spec (with
    ``dataset_uri`` overriding the config's dataset) and ``generation.params``. Returns the spec.

    ``cflab`` runs these before anything that may touch data or storage, so a typo is one line
    in about a second whatever else the config names (a Secret block, an S3 dataset).
    """
    from counterfactual_lab.method_params import check_method_params

    spec = config.dataset_spec(dataset_uri)
    if not spec.columns.counterfactual_set:  # an evaluate-only dataset needs no generator
        check_method_params(config.generation)
    return spec


def check_audit(config: AuditConfig, dataset_uri: str | None = None, *, evaluate: bool = True) -> DatasetSpec:
    """Check ``config`` (with ``dataset_uri`` overriding its dataset) for a run; return the dataset spec.

    ``evaluate=False`` (``cflab generate``) skips the model under audit. Raises a
    :class:`~counterfactual_lab.errors.UserError` naming the key at fault.
    """
    from counterfactual_lab.method_params import METHODS_WITHOUT_WEIGHTS, check_method_params

    spec = check_config(config, dataset_uri)
    generates = not spec.columns.counterfactual_set  # an evaluate-only dataset needs no generator
    params = check_method_params(config.generation) if generates else {}
    if generates and config.generation.method == "text2image-sets":
        from counterfactual_lab.text2image_sets import check_text2image

        check_text2image(config, spec)
    roles = {"judge.model": config.judge.model} if generates else {}
    if generates and config.generation.method not in METHODS_WITHOUT_WEIGHTS:
        roles = {"generation.model": config.generation.model, **roles}
        mask = params.get("mask")
        if isinstance(mask, dict) and "model" in mask:
            roles["generation.params.mask.model"] = mask["model"]
    if evaluate:
        roles["audit.model"] = config.audit.model
    for key, model in roles.items():
        check_model_reference(key, model)

    from counterfactual_lab.devices import resolve_device  # imports torch

    resolve_device(config.runtime.device)
    if evaluate:
        from counterfactual_lab.auditees.preflight import check_auditee  # kind, prompts, lexicon, toxicity model

        check_auditee(config)
    if generates:
        from counterfactual_lab.generation.editors import validate_generation  # imports the pipeline class

        validate_generation(config.generation)
    return spec


def check_model_reference(key: str, model: str) -> None:
    """A local model folder must exist, hold safetensors weights and ship no code; a hub id
    cannot be checked offline and is left to loading time."""
    from counterfactual_lab.model_safety import check_local_model_dir, check_no_custom_code

    path = Path(model).expanduser()
    if path.exists():
        check_local_model_dir(model)
        check_no_custom_code(model)
        return
    if model.startswith((".", "/", "~")) or Path(model).is_absolute():
        raise ConfigError(f"{key}: {model} does not exist (a local model folder; build the demo's with `cflab models tiny DIR`)")
