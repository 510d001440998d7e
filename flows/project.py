"""The project folder on whichever worker runs a deployment: the pull step of prefect.yaml.

A deployment names files relative to the project: its entrypoint (``flows/audit.py``), the
audit config (``configs/audit.yaml``), the catalogue (``datasets/``), the demo's models and
sample (``./.cflab``), the watcher's default prefix and output (``./data/incoming``, ``./out``).
Prefect 3's process worker starts every flow run in a fresh temporary folder, and ``prefect
deploy`` without a ``pull`` section records the folder it ran in, which does not exist on
another machine or after the clone moves. :func:`use_project_directory` is the ``pull`` step
instead: at run time, on the worker, it finds the project and makes it the run's working
directory, so those relative paths resolve there. It looks, in this order, at

1. ``directory``, the step's argument (e.g. the folder a ``git_clone`` step made);
2. the environment variable :data:`PROJECT_DIR_ENV` (``CFLAB_PROJECT_DIR``) of the worker; the
   image built from ``infra/Dockerfile`` sets it to ``/opt/cflab``;
3. the source checkout the installed package comes from (``pip install -e .`` in a clone).

No Prefect import: a pull step is a plain function that Prefect imports by name.
"""

from __future__ import annotations

import os
from pathlib import Path

from counterfactual_lab.errors import UserError

PROJECT_DIR_ENV = "CFLAB_PROJECT_DIR"
# What a folder must hold to be the project a deployment runs in.
PROJECT_MARKERS = ("prefect.yaml", "flows", "configs", "datasets")


def missing_markers(folder: Path) -> list[str]:
    """The entries of :data:`PROJECT_MARKERS` that ``folder`` lacks."""
    return [name for name in PROJECT_MARKERS if not (folder / name).exists()]


def installed_checkout() -> Path | None:
    """The clone the installed package was installed from (an editable install), else None."""
    # flows/ is installed as counterfactual_lab.flows: in a checkout, this file is <clone>/flows/project.py.
    candidate = Path(__file__).resolve().parent.parent
    return candidate if not missing_markers(candidate) else None


def find_project_directory(directory: str | None = None) -> Path:
    """The project folder for this run (see the module docstring for the order); raises a
    :class:`UserError` that says how to name one when there is none."""
    for source, value in ((f"the pull step's directory {directory!r}", directory),
                          (f"{PROJECT_DIR_ENV}={os.environ.get(PROJECT_DIR_ENV)!r}", os.environ.get(PROJECT_DIR_ENV))):
        if value:
            folder = Path(value).expanduser().resolve()
            lacking = missing_markers(folder)
            if lacking:
                raise UserError(
                    f"{source} is not a Counterfactual Lab project: {folder} has no {', '.join(lacking)}; "
                    f"point {PROJECT_DIR_ENV} at a clone of the project on this worker"
                )
            return folder
    checkout = installed_checkout()
    if checkout is not None:
        return checkout
    raise UserError(
        f"no Counterfactual Lab project on this worker: set {PROJECT_DIR_ENV} to a clone of the project "
        "(with prefect.yaml, flows/, configs/, datasets/) before `prefect worker start`, install it with "
        "`pip install -e .` from a clone, or run the worker in the image from infra/Dockerfile"
    )


def use_project_directory(directory: str | None = None) -> dict[str, str]:
    """prefect.yaml's pull step: make the project folder the flow run's working directory.

    Returns ``{"directory": <folder>}``, the output Prefect reads to run the flow there.
    """
    folder = find_project_directory(directory)
    os.chdir(folder)
    return {"directory": str(folder)}
