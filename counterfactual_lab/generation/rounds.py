"""Adaptive over-generation: generate seeds in rounds, and stop each target once enough passed.

SocialCounterfactuals generated 100 seeds for every set and kept a few. With
``generation.adaptive`` (the default) ``seeds_per_target`` is a ceiling instead: the seeds are
generated in rounds, the judge runs after each, and a *unit* stops as soon as
``keep_per_target`` of its candidates passed:

* with reconstructions (sets) and for text-to-image member sets, a unit is a (source,
  attribute) and its passed candidates are its complete sets (every member passed);
* without reconstructions (``generation.reconstruction: false``), a unit is a (source,
  attribute, target value) and its passed candidates are the counterfactuals that passed.

**Rounds** (:func:`seed_rounds`): the cumulative seed count doubles, starting at
``keep_per_target`` and capped at the ceiling — with seed s₀, keep k and ceiling n, round 1 holds
seeds s₀ … s₀+k−1, round 2 the next k, round 3 the next 2k, and so on until n. A unit whose
first k seeds all pass costs k seeds instead of n; one that never gets enough runs to the ceiling,
as the fixed plan would. The control of a (source, attribute) — at seed ``seed +
seeds_per_target``, a seed no round uses — is generated in the first round.

**Determinism.** A round holds the plan's items of its seeds for the units still open, in plan
order, so it depends only on the config, the data and the judge's (deterministic) verdicts on
earlier rounds: a rerun asks for the same batches, which the task cache and the image store
serve. Keeping is decided over everything generated so far, by the judge's usual rule, so the
kept result is the judge's best among the seeds that were generated.

**Counts** (the manifest's ``generation_counts``): ``calls`` = the images the rounds asked of the
generator (distinct content keys, made now or found in the store), ``calls_fixed`` = the images the
fixed over-generation of every seed up to the ceiling would have asked for, ``rounds`` = the
rounds run. ``generation.adaptive: false`` runs one round of every seed (``calls`` =
``calls_fixed``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from counterfactual_lab.generation.candidates import candidates_frame
from counterfactual_lab.generation.records import (
    FAILED,
    GenerationRecord,
    generation_counts,
)
from counterfactual_lab.judge.scores import DROP_NOT_BEST, DROP_NOT_BEST_SET
from counterfactual_lab.plan.work_items import (
    VARIANT_RECONSTRUCTION,
    WorkItem,
    unique_by_content_key,
)

Unit = tuple[Any, ...]


def seed_rounds(first_seed: int, ceiling: int, keep: int, adaptive: bool = True) -> list[list[int]]:
    """The seeds of each round (see the module docstring); one round of every seed when not ``adaptive``."""
    if ceiling < 1 or keep < 1:
        raise ValueError(f"seeds per target ({ceiling}) and keep per target ({keep}) must be at least 1")
    if not adaptive:
        return [list(range(first_seed, first_seed + ceiling))]
    rounds, done, size = [], 0, min(keep, ceiling)
    while done < ceiling:
        upto = min(ceiling, done + size)
        rounds.append(list(range(first_seed + done, first_seed + upto)))
        size, done = upto, upto  # the cumulative count doubles
    return rounds


def judged_by_sets(items: Iterable[WorkItem]) -> bool:
    """True when the judge keeps whole sets: the plan has reconstructions or text-to-image members."""
    return any(item.variant == VARIANT_RECONSTRUCTION or item.attribute_values for item in items)


def unit_of(item: WorkItem | dict[str, Any], by_sets: bool) -> Unit:
    """The unit an item counts towards: (source, attribute) for sets, else (source, attribute, target)."""
    get = item.get if isinstance(item, dict) else lambda name: getattr(item, name)
    if by_sets:
        return (get("source_id"), get("attribute"))
    return (get("source_id"), get("attribute"), get("target_value"))


def round_items(items: list[WorkItem], seeds: Iterable[int], open_units: set[Unit], by_sets: bool,
                first_round: bool) -> list[WorkItem]:
    """The plan's items of ``seeds`` for the units still open, in plan order (controls in the first round)."""
    wanted = set(seeds)
    return [
        item for item in items
        if (first_round if item.control else item.seed in wanted and unit_of(item, by_sets) in open_units)
    ]


def satisfied_units(judged: pl.DataFrame, keep: int, by_sets: bool) -> set[Unit]:
    """The units with at least ``keep`` passed candidates in ``judged`` (the judge's output):
    complete sets for sets, passing counterfactuals otherwise (kept, or outranked by better ones)."""
    if judged.is_empty():
        return set()
    outranked = DROP_NOT_BEST_SET if by_sets else DROP_NOT_BEST
    control = pl.col("control").fill_null(False) if "control" in judged.columns else pl.lit(False)
    passed = judged.filter(~control & (pl.col("kept").fill_null(False) | (pl.col("drop_reason") == outranked)))
    keys = ["source_id", "attribute"] if by_sets else ["source_id", "attribute", "target_value"]
    counted = passed.group_by(keys).agg(pl.col("seed").n_unique() if by_sets else pl.len())
    return {tuple(row[:-1]) for row in counted.iter_rows() if row[-1] >= keep}


def over_generation_counts(asked: list[WorkItem], planned: list[WorkItem], rounds: int,
                           never_generated: Iterable[str] = ()) -> dict[str, int]:
    """``calls`` (distinct images the rounds asked for), ``calls_fixed`` (distinct images of the whole
    plan) and ``rounds``; items in ``never_generated`` (no usable mask) are no calls."""
    skip = set(never_generated)
    return {
        "calls": len({item.content_key for item in asked} - skip),
        "calls_fixed": len({item.content_key for item in planned} - skip),
        "rounds": rounds,
    }


@dataclass
class RoundsOutcome:
    """What the rounds made: every record, the judge's last verdict over all of it, what was asked."""

    records: list[Any] = field(default_factory=list)
    judged: pl.DataFrame = field(default_factory=pl.DataFrame)
    asked: list[WorkItem] = field(default_factory=list)
    rounds: int = 0

    def counts(self, planned: list[WorkItem], never_generated: Iterable[str] = ()) -> dict[str, int]:
        """The manifest's ``generation_counts``: generated, cache hits, failed, OOM halvings, calls,
        calls_fixed, rounds."""
        return {**generation_counts(self.records), **over_generation_counts(self.asked, planned, self.rounds, never_generated)}


def run_rounds(
    items: list[WorkItem],
    generation: Any,
    *,
    generate: Callable[[list[WorkItem]], list[Any]],
    judge: Callable[[pl.DataFrame], pl.DataFrame],
    never_generated: dict[str, str] | None = None,
) -> RoundsOutcome:
    """Generate and judge ``items`` (the whole plan, up to the ceiling) in rounds of seeds.

    ``generate(items)`` makes the images of a round's distinct items (one task per batch) and
    returns their records; ``judge(candidates)`` judges the candidates frame of everything asked
    so far (:func:`counterfactual_lab.generation.candidates.candidates_frame`). ``never_generated``: content
    keys that cannot be made (an inpainting source without a usable mask) with their error: they
    are recorded failed and never sent to ``generate``. Stops when every unit has
    ``generation.keep_per_target`` passed, or at the ceiling.
    """
    never_generated = never_generated or {}
    by_sets = judged_by_sets(items)
    open_units = {unit_of(item, by_sets) for item in items if not item.control}
    outcome = RoundsOutcome()
    schedule = seed_rounds(generation.seed, generation.seeds_per_target, generation.keep_per_target, generation.adaptive)
    for index, seeds in enumerate(schedule):
        this_round = round_items(items, seeds, open_units, by_sets, first_round=index == 0)
        outcome.rounds += 1
        outcome.asked += this_round
        # Items sharing a content key (img2img reconstructions of several attributes) are made once.
        unique = unique_by_content_key(this_round)
        outcome.records += generate([i for i in unique if i.content_key not in never_generated])
        outcome.records += [GenerationRecord(i.content_key, None, FAILED, error=never_generated[i.content_key])
                            for i in unique if i.content_key in never_generated]
        outcome.judged = judge(candidates_frame(outcome.asked, outcome.records, generation.method))
        open_units -= satisfied_units(outcome.judged, generation.keep_per_target, by_sets)
        if not open_units:
            break
    return outcome
