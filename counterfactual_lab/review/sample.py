"""Which sets people review: a stratified, seeded sample, recorded in ``review/sample.json``.

Each set's stratum is (attribute, transition, the judge's verdict: kept or dropped). The sets
are shuffled with the seed, then taken round-robin over the strata (strata in sorted order),
so every stratum is in the sample before any has a second set, and dropped sets (where the
judge's false rejections are found) are sampled beside kept ones however few they are.

The order depends on the run's sets and the seed only, so the first N sets of ``--size M``
(M > N) are the sets of ``--size N``: a larger sample extends a smaller one, and two reviewers
with the same seed see the same sets in the same order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from counterfactual_lab.errors import UserError
from counterfactual_lab.review.labels import SAMPLE_NAME, review_uri
from counterfactual_lab.review.sets import ReviewSet
from counterfactual_lab.storage.files import exists, join, write_bytes_atomic
from counterfactual_lab.storage.json_files import DamagedJson, read_json

# The most a recorded sample may hold (it lists sets by id: far less in practice).
SAMPLE_MAX_BYTES = 64 * 2**20

DEFAULT_SIZE = 100
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Sample:
    """The sampled sets in review order, with the seed and size asked for (``size`` may exceed the sets there are)."""

    seed: int
    size: int
    sets: tuple[ReviewSet, ...]

    @property
    def set_ids(self) -> list[str]:
        return [s.set_id for s in self.sets]

    def record(self) -> dict[str, Any]:
        """What ``sample.json`` holds."""
        return {"seed": self.seed, "size": self.size, "set_ids": self.set_ids,
                "strata": {s.set_id: list(s.stratum) for s in self.sets},
                "method": "shuffled with the seed, then round-robin over strata (attribute, transition, judge verdict)"}


def review_order(sets: list[ReviewSet], seed: int) -> list[ReviewSet]:
    """Every set, in the order the sample takes them (see the module docstring)."""
    rng = np.random.default_rng(seed)
    shuffled = [sets[i] for i in rng.permutation(len(sets))]
    strata: dict[tuple[str, str, str], list[ReviewSet]] = {}
    for s in shuffled:
        strata.setdefault(s.stratum, []).append(s)
    queues = [strata[key] for key in sorted(strata)]
    order = []
    for depth in range(max((len(q) for q in queues), default=0)):
        order += [q[depth] for q in queues if depth < len(q)]
    return order


def stratified_sample(sets: list[ReviewSet], size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> Sample:
    """The first ``size`` sets of :func:`review_order` (all of them when there are fewer)."""
    if size < 1:
        raise UserError(f"--size {size}: the sample needs at least one set")
    return Sample(seed=seed, size=size, sets=tuple(review_order(sets, seed)[:size]))


def sample_uri(run_uri: str) -> str:
    return join(review_uri(run_uri), SAMPLE_NAME)


def read_sample_record(run_uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The recorded sample (``sample.json``), or None when the run has none yet."""
    uri = sample_uri(run_uri)
    if not exists(uri, storage_options):
        return None
    try:
        record = read_json(uri, storage_options, max_bytes=SAMPLE_MAX_BYTES, what=uri)
    except (DamagedJson, UnicodeDecodeError):
        raise UserError(f"{uri} is damaged (not JSON): delete it and run cflab review again to draw the sample anew") from None
    if not isinstance(record, dict) or not isinstance(record.get("seed"), int):
        raise UserError(f"{uri} is damaged (no seed): delete it and run cflab review again to draw the sample anew") from None
    return record


def write_sample_record(run_uri: str, sample: Sample, storage_options: dict[str, Any] | None = None) -> str:
    uri = sample_uri(run_uri)
    write_bytes_atomic(uri, json.dumps(sample.record(), indent=2).encode("utf-8"), storage_options)
    return uri


def resolve_sample(run_uri: str, sets: list[ReviewSet], size: int | None, seed: int | None,
                   storage_options: dict[str, Any] | None = None) -> Sample:
    """The sample to review: the recorded one's seed and size unless given, else the defaults."""
    recorded = read_sample_record(run_uri, storage_options) or {}
    seed = seed if seed is not None else recorded.get("seed", DEFAULT_SEED)
    size = size if size is not None else recorded.get("size", DEFAULT_SIZE)
    return stratified_sample(sets, size=int(size), seed=int(seed))
