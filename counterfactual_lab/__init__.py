"""Multimodal Counterfactual Lab: audit vision-language models for social bias.

The Python API (see the README's "Python API" section)::

    import counterfactual_lab as cfl

    cfl.CounterfactualGenerator(method="img2img", model=..., judge=...).generate(image, caption, "gender")
    run = cfl.open_run("out/sample-<id>")          # a finished run, local or s3://; tables are polars DataFrames
    change = cfl.compare_runs("out/run-a", "out/run-b")  # what changed beyond its intervals; change.write("compare.html")

    from counterfactual_lab.flows.api import run_audit
    run = run_audit("configs/audit.yaml")          # or a dict: runs the audit flow, returns the run

The library is plain Python: it never imports Prefect. Orchestration (the Prefect tasks and
flows, the ``cflab`` command, ``run_audit``) lives in the repository's ``tasks/`` and ``flows/``
folders, installed as ``counterfactual_lab.tasks`` and ``counterfactual_lab.flows``. The API's
names load on first use, so ``import counterfactual_lab`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from counterfactual_lab.version import __version__

__all__ = ["AuditRun", "Counterfactual", "CounterfactualGenerator", "__version__", "compare_runs", "open_run"]

_API = {"AuditRun", "Counterfactual", "CounterfactualGenerator", "compare_runs", "open_run"}

if TYPE_CHECKING:
    from counterfactual_lab.api import (
        AuditRun,
        Counterfactual,
        CounterfactualGenerator,
        compare_runs,
        open_run,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        # here, not at the top: so `import counterfactual_lab` stays fast
        from counterfactual_lab import api

        return getattr(api, name)
    raise AttributeError(f"module 'counterfactual_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
