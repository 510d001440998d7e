"""How many items one Prefect task holds in a fan-out: orchestration as a fixed number of task runs.

Each task run costs Prefect tens of milliseconds on a loaded machine (creating the run, its
states and logs, the cache lookup and the stored result of a generation batch), whatever it
does. One task per model batch made that cost grow with the audit: at 10⁵ work items, 2,084
task runs were about a fifth of the wall time (``bench/scale.py``). So a fan-out of ``count``
items makes at most ``max_workers × tasks_per_worker`` tasks (``runtime.tasks_per_worker``), each
of a whole number of model batches (``unit``: ``generation.batch_size``, ``audit.batch_size``),
and never fewer items than ``minimum``. The size depends only on the config and the count, so a
rerun makes the same tasks and Prefect's cache of generation batches still hits. Inside a task the
library still works in model batches (``generate_batch`` stores each image as it goes, so a retried
or resumed task redoes only what is missing).
"""

from __future__ import annotations

import math

from counterfactual_lab.config.audit_config import RuntimeSection


def items_per_task(count: int, unit: int, runtime: RuntimeSection, minimum: int = 1) -> int:
    """Items per task for a fan-out of ``count`` items: ``ceil(count / (max_workers ×
    tasks_per_worker))``, at least ``minimum``, rounded up to a multiple of ``unit``."""
    tasks = max(1, runtime.max_workers * runtime.tasks_per_worker)
    wanted = max(math.ceil(count / tasks), minimum, 1)
    unit = max(1, unit)
    return unit * math.ceil(wanted / unit)
