"""The design of a run: which stratum its comparisons belong to, and each stratum's pool.

``predictions`` (the evaluation pool plus the model's answers) tells which design produced it:

* reconstructions present → ``generated``: pairs are reconstruction → counterfactual within a set,
  with control pairs beside them; group and retrieval metrics rank the balanced generated sets
  (reconstructions and counterfactuals of kept sets, controls excluded);
* originals and counterfactuals, no reconstruction → ``real_vs_generated`` (reconstruction off):
  pairs are original → counterfactual; group and retrieval metrics run on the mixed pool, where
  one group is mostly real photos and another mostly generated images;
* counterfactuals only → ``evaluate_only`` (a dataset of counterfactual sets): pairs are every
  ordered pair of members of a set; group and retrieval metrics run on the whole pool.

Originals always form the ``observational`` stratum as well: descriptive, not a comparison.

The design is the config's (:func:`design_stratum`: ``generation.reconstruction`` and whether the
dataset holds counterfactual sets), not what survived the judge: when the judge drops every set
of an attribute, its predictions hold originals only, yet its comparison is still due and
undefined. :func:`comparison_stratum` reads the design from the pool only where the caller does
not give it.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from counterfactual_lab.evaluate.pool import score_column
from counterfactual_lab.metrics.schema import (
    STRATUM_EVALUATE_ONLY,
    STRATUM_GENERATED,
    STRATUM_OBSERVATIONAL,
    STRATUM_REAL_VS_GENERATED,
)
from counterfactual_lab.plan.work_items import (
    VARIANT_COUNTERFACTUAL,
    VARIANT_ORIGINAL,
    VARIANT_RECONSTRUCTION,
)

_VARIANTS = (VARIANT_ORIGINAL, VARIANT_RECONSTRUCTION, VARIANT_COUNTERFACTUAL)
# The strata a run's comparisons can belong to (one per design).
DESIGNS = (STRATUM_GENERATED, STRATUM_REAL_VS_GENERATED, STRATUM_EVALUATE_ONLY)
# Variants a design's pool cannot hold.
_FOREIGN = {
    STRATUM_GENERATED: (),
    STRATUM_REAL_VS_GENERATED: (VARIANT_RECONSTRUCTION,),
    STRATUM_EVALUATE_ONLY: (VARIANT_ORIGINAL, VARIANT_RECONSTRUCTION),
}
_REQUIRED = ("id", "source_id", "variant", "attribute", "group", "content_key", "top1")
# Columns of the pool contract that older pools lack, with the value they mean there.
_DEFAULTS = {"control": (False, pl.Boolean), "seed": (None, pl.Int64), "set_id": (None, pl.String), "label": (None, pl.String)}


def normalise_predictions(predictions: pl.DataFrame, labels: Sequence[str]) -> pl.DataFrame:
    """``predictions`` with every column the metrics read; a missing required column is an error.

    A pool written before reconstructions existed lacks ``control``, ``seed`` and ``set_id``:
    they read as not-a-control and null.
    """

    missing = [c for c in (*_REQUIRED, *[score_column(label) for label in labels]) if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack columns {missing} (has {predictions.columns})")
    unknown = sorted(set(predictions["variant"].drop_nulls().unique().to_list()) - set(_VARIANTS))
    if unknown or predictions["variant"].null_count():
        raise ValueError(f"predictions have variants {unknown or ['null']}; expected one of {list(_VARIANTS)}")
    if predictions["source_id"].null_count():
        raise ValueError("predictions have rows without a source_id (every row needs the source it derives from)")
    added = [pl.lit(value, dtype=dtype).alias(name) for name, (value, dtype) in _DEFAULTS.items() if name not in predictions.columns]
    return predictions.with_columns(added) if added else predictions


def design_stratum(reconstruction: bool, evaluate_only: bool = False) -> str:
    """The stratum of a run's comparisons from its config: ``evaluate_only`` (the dataset holds
    counterfactual sets) → ``evaluate_only``; else ``generation.reconstruction`` on → ``generated``,
    off → ``real_vs_generated``."""
    if evaluate_only:
        return STRATUM_EVALUATE_ONLY
    return STRATUM_GENERATED if reconstruction else STRATUM_REAL_VS_GENERATED


def check_design(predictions: pl.DataFrame, design: str) -> None:
    """Refuse a design the pool contradicts (e.g. reconstructions in a run with reconstruction off)."""
    if design not in DESIGNS:
        hint = " (originals are described, never compared)" if design == STRATUM_OBSERVATIONAL else ""
        raise ValueError(f"design must be one of {list(DESIGNS)}, got {design!r}{hint}")
    foreign = sorted(set(predictions["variant"].unique().to_list()) & set(_FOREIGN[design]))
    if foreign:
        raise ValueError(f"predictions hold {foreign} images, which a {design!r} run does not make")


def comparison_stratum(predictions: pl.DataFrame) -> str | None:
    """The stratum of the run's comparisons (module doc); None when there are only originals."""
    variants = set(predictions["variant"].unique().to_list())
    if VARIANT_RECONSTRUCTION in variants:
        return STRATUM_GENERATED
    if VARIANT_COUNTERFACTUAL in variants:
        return STRATUM_REAL_VS_GENERATED if VARIANT_ORIGINAL in variants else STRATUM_EVALUATE_ONLY
    return None


def comparison_pool(predictions: pl.DataFrame, stratum: str) -> pl.DataFrame:
    """The rows that group and retrieval metrics of ``stratum`` rank and compare."""
    not_control = ~pl.col("control").fill_null(False)
    if stratum == STRATUM_GENERATED:
        return predictions.filter(
            pl.col("variant").is_in([VARIANT_RECONSTRUCTION, VARIANT_COUNTERFACTUAL]) & not_control & pl.col("set_id").is_not_null()
        )
    if stratum == STRATUM_EVALUATE_ONLY:
        return predictions.filter(pl.col("variant") == VARIANT_COUNTERFACTUAL)
    if stratum == STRATUM_REAL_VS_GENERATED:
        return predictions.filter(pl.col("variant").is_in([VARIANT_ORIGINAL, VARIANT_COUNTERFACTUAL]) & not_control)
    raise ValueError(f"no comparison pool for stratum {stratum!r}")


def observational_pool(predictions: pl.DataFrame) -> pl.DataFrame:
    """The originals."""
    return predictions.filter(pl.col("variant") == VARIANT_ORIGINAL)


def restrict_groups(pool: pl.DataFrame, values: Sequence[str] | None) -> tuple[pl.DataFrame, str | None]:
    """(rows whose group is known and, when ``values`` is given, one of them; a note on the rest).

    In the generated stratum a source whose own value is not among the attribute's listed
    values has a reconstruction of that value; it is paired, but it is not part of the
    balanced sets, so group and retrieval metrics leave it out (and say so).
    """
    known = pl.col("group").is_not_null()
    keep = known & pl.col("group").is_in(list(values)) if values is not None else known
    rest = pool.filter(~keep)
    if rest.height == 0:
        return pool, None
    parts = []
    unknown = rest.filter(pl.col("group").is_null()).height
    if unknown:
        parts.append(f"unknown group ({unknown})")
    counts = rest.filter(pl.col("group").is_not_null()).group_by("group").len().sort("group")
    parts += [f"{g} ({n})" for g, n in counts.iter_rows()]
    scope = f"not among the attribute's values {sorted(values)}" if values is not None else "group unknown"
    return pool.filter(keep), f"left out, {scope}: " + ", ".join(parts)
