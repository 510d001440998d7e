"""Everything about an audit that can be checked before Prefect starts, so a bad config fails
in seconds with one line and never leaves a run folder.

:func:`check_audit` runs the checks cheapest first: the dataset spec and its vocabularies,
``generation.params`` by name, range and "can this make an image" (no torch), each model
reference (a local folder must exist, hold safetensors and ship no code; nothing is loaded),
the device, and last the params against the installed diffusers pipeline's call signature
(imports the pipeline class, reads no weights), and the model under audit's kind, prompts,
lexicon and toxicity model (:mod:`counterfactual_lab.runs.auditee_preflight`). Data is not read here: listing a dataset or
an S3 bucket is the flow's first step.
"""

from __future__ import annotations

import os
from pathlib import Path

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.config.methods import check_method_params, method_facts
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.models.safety import check_model_reference

# The folder `cflab demo` builds its inputs in (its --home, ./.cflab by default): the sample
# dataset (HOME/sample-dataset) and the tiny models (HOME/models/<name>).
DEMO_HOME_NAME = ".cflab"


def check_config(config: AuditConfig, dataset_uri: str | None = None) -> DatasetSpec:
    """The checks that read nothing but the config and cost milliseconds: the dataset spec (with
    ``dataset_uri`` overriding the config's dataset) and ``generation.params``. Returns the spec.

    ``cflab`` runs these before anything that may touch data or storage, so a typo is one line
    in about a second whatever else the config names (a Secret block, an S3 dataset).
    """

    spec = config.dataset_spec(dataset_uri)
    if not spec.columns.counterfactual_set:  # an evaluate-only dataset needs no generator
        check_method_params(config.generation)
    return spec


def check_audit(config: AuditConfig, dataset_uri: str | None = None, *, evaluate: bool = True) -> DatasetSpec:
    """Check ``config`` (with ``dataset_uri`` overriding its dataset) for a run; return the dataset spec.

    ``evaluate=False`` (``cflab generate``) skips the model under audit. Raises a
    :class:`~counterfactual_lab.errors.UserError` naming the key at fault.
    """

    spec = check_config(config, dataset_uri)
    generates = not spec.columns.counterfactual_set  # an evaluate-only dataset needs no generator
    params = check_method_params(config.generation) if generates else {}
    if generates and config.prompts_may_come_from_templates():
        # here, not at the top: it imports polars
        from counterfactual_lab.generation.text2image_sets import check_text2image

        check_text2image(config, spec)
    roles = {"judge.model": config.judge.model} if generates else {}
    if generates and method_facts(config.generation.method).has_weights:
        roles = {"generation.model": config.generation.model, **roles}
        mask = params.get("mask")
        if isinstance(mask, dict) and "model" in mask:
            roles["generation.params.mask.model"] = mask["model"]
    if evaluate:
        roles["audit.model"] = config.audit.model
    check_demo_inputs(roles, spec)
    for key, model in roles.items():
        check_model_reference(key, model)

    # imports torch
    from counterfactual_lab.models.devices import resolve_device

    resolve_device(config.runtime.device)
    if evaluate:
        # kind, prompts, lexicon, toxicity model
        from counterfactual_lab.runs.auditee_preflight import check_auditee

        check_auditee(config)
    if generates:
        # here, not at the top: it imports torch and diffusers
        from counterfactual_lab.generation.editor import validate_generation

        validate_generation(config.generation)
    return spec


def _demo_home(path: str) -> Path | None:
    """The demo home folder ``path`` lies in (``…/.cflab``), or None for any other path."""
    if "://" in path and not path.startswith("file://"):
        return None
    parts = Path(path.removeprefix("file://")).parts
    if DEMO_HOME_NAME not in parts:
        return None
    return Path(*parts[: parts.index(DEMO_HOME_NAME) + 1])


def check_demo_inputs(models: dict[str, str], spec: DatasetSpec) -> None:
    """One line naming every missing input of the demo's that the config uses (a tiny model or
    the sample dataset under a ``.cflab`` folder) and the ``cflab`` command that builds them.

    Checked before each model on its own, so a clone without ``./.cflab`` hears "run `cflab
    demo`" once, not "build the models" and then, on the next run, "build the dataset".
    """
    missing: list[tuple[str, str, Path]] = []
    for key, path in [*models.items(), ("dataset", spec.uri)]:
        home = _demo_home(path)
        if home is not None and not Path(path.removeprefix("file://")).expanduser().exists():
            missing.append((key, path, home))
    if not missing:
        return
    home = missing[0][2]
    here = Path(os.getcwd())
    build = "cflab demo" if (here / home).resolve() == (here / DEMO_HOME_NAME).resolve() else f"cflab demo --home {home}"
    what = ", ".join(f"{key} {path}" for key, path, _ in missing)
    keys = {key for key, _, _ in missing}
    if keys == {"dataset"}:
        also = f", or only the dataset: `cflab sample-dataset {missing[0][1]}`"
    elif "dataset" not in keys:
        also = f", or every tiny model: `cflab models tiny {home / 'models'}`"
    else:
        also = ""
    raise ConfigError(
        f"the demo's inputs are missing: {what}; build them with `{build}` run in {here} "
        f"(it makes {home}: the sample dataset and the tiny models){also}"
    )
