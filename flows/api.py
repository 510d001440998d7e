"""The Python API's audit: :func:`run_audit` runs the ``dataset-audit`` flow from a config file or a
dict and returns the finished run as :class:`counterfactual_lab.api.AuditRun`.

It lives on the orchestration side because it runs a Prefect flow; everything else of the
Python API (``CounterfactualGenerator``, ``open_run``) is in :mod:`counterfactual_lab.api` and
needs no Prefect.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from counterfactual_lab.api import AuditRun, open_run
from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.flows.audit import dataset_audit


def run_audit(
    config: str | Path | Mapping[str, Any],
    *,
    dataset: str | None = None,
    output: str | None = None,
    force: bool = False,
) -> AuditRun:
    """Run the whole audit and return the finished run (:func:`~counterfactual_lab.api.open_run` of its folder).

    ``config``: an audit config YAML file, or a dict of the same keys (relative paths in a dict
    resolve against the current directory). ``dataset`` and ``output`` override the config's
    dataset and ``output.uri``; ``force`` runs every stage again. The config is checked before
    anything starts; the run is the ``dataset-audit`` Prefect flow (a temporary local Prefect
    server is started unless ``PREFECT_API_URL`` names one), so an unchanged complete run is
    returned as it is.
    """
    if isinstance(config, Mapping):
        raw = json.loads(json.dumps(dict(config), default=str))  # a plain copy, as YAML would give
        raw.setdefault("base_dir", str(Path.cwd()))
        parsed = AuditConfig.parse_config(raw, source="config dict")
        with tempfile.TemporaryDirectory(prefix="cflab-config-") as folder:
            # The flow takes a config file (a plain parameter the Prefect UI can show and rerun);
            # the run's manifest keeps the config itself.
            digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]
            path = Path(folder) / f"audit-{digest}.yaml"
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            return _run_flow(parsed, str(path), dataset, output, force)
    path = Path(config)
    return _run_flow(AuditConfig.from_yaml(path), str(path), dataset, output, force)


def _run_flow(config: AuditConfig, config_path: str, dataset: str | None, output: str | None, force: bool) -> AuditRun:
    config.dataset_spec(dataset)  # a bad dataset reference fails here, before Prefect starts
    run_uri = dataset_audit(config_uri=config_path, dataset_uri=dataset, output_uri=output, evaluate=True, force=force)
    return open_run(run_uri, config.output.storage_options or None)
