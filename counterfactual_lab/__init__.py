"""Multimodal Counterfactual Lab: audit vision-language models for social bias.

The Python API (see the README's "Python API" section)::

    import counterfactual_lab as cfl

    cfl.CounterfactualGenerator(method="img2img", model=..., judge=...).generate(image, caption, "gender")
    run = cfl.run_audit("configs/audit.yaml")      # or a dict; the tables are polars DataFrames
    run = cfl.open_run("out/sample-<id>")          # a finished run, local or s3://

The library is plain Python: it never imports Prefect (``run_audit`` imports the flow when it
is called). Orchestration lives in the top-level ``tasks`` and ``flows`` packages. The API's
names load on first use, so ``import counterfactual_lab`` (and ``cflab --help``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["AuditRun", "Counterfactual", "CounterfactualGenerator", "__version__", "open_run", "run_audit"]

_API = {"AuditRun", "Counterfactual", "CounterfactualGenerator", "open_run", "run_audit"}

if TYPE_CHECKING:
    from counterfactual_lab.api import AuditRun, Counterfactual, CounterfactualGenerator, open_run, run_audit


def __getattr__(name: str) -> Any:
    if name in _API:
        from counterfactual_lab import api

        return getattr(api, name)
    raise AttributeError(f"module 'counterfactual_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
