"""Validation with Great Expectations: ingested rows -> valid rows + quarantine (one reason per row).

Two expectation suites are built from the dataset spec in an ephemeral GX context:

* the **schema suite** (``expect_column_to_exist`` for every required column) runs once on
  the dataset's column names; a failure means the dataset cannot be audited at all and
  raises :class:`~counterfactual_lab.errors.DatasetUnreadable`;
* the **row suite** runs on large chunks of the small per-row frames that
  :func:`counterfactual_lab.ingest.read.ingest` streams (image checks already measured there):
  image decoded, byte size and pixel count within limits, id present and unique, caption
  present, not blank, length within bounds, attribute values inside the vocabulary.

Every expectation carries its quarantine reason in ``meta``; GX's ``unexpected_index_list``
maps each failure to its row. A row failing several expectations is quarantined once, with
the reason of the first failing expectation in suite order and every problem in ``detail``.
Rows in = valid + quarantined, always.

Duplicate ids: the first row carrying an id owns it (even if that row is quarantined for
another reason); later rows with the same id are quarantined as duplicates. Uniqueness is
tracked across chunks and files, so it holds for the whole dataset.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.errors import DatasetUnreadable
from counterfactual_lab.ingest.read import (
    OTHER_ATTRIBUTES,
    REASON_IMAGE_NOT_FOUND,
    REASON_IMAGE_UNREADABLE,
    REASON_MISSING_IMAGE,
    REASON_NOT_A_REGULAR_FILE,
    ingest,
)
from counterfactual_lab.ingest.source import (
    REASON_INVALID_IMAGE_PATH,
    REASON_PATH_ESCAPES_ROOT,
    DatasetSource,
    missing_columns_message,
    open_dataset,
    short_repr,
)
from counterfactual_lab.storage.files import ImageStore, join, write_bytes_atomic
from counterfactual_lab.storage.images import (  # noqa: F401  (re-exported: every reason lives here)
    REASON_DECOMPRESSION_BOMB,
    REASON_EMPTY_IMAGE,
    REASON_TRUNCATED,
    REASON_UNDECODABLE,
)

REASON_TOO_MANY_PIXELS = "too_many_pixels"
REASON_IMAGE_TOO_LARGE = "image_too_large"
REASON_MISSING_ID = "missing_id"
REASON_DUPLICATE_ID = "duplicate_id"
REASON_MISSING_CAPTION = "missing_caption"
REASON_BLANK_CAPTION = "blank_caption"
REASON_CAPTION_TOO_SHORT = "caption_too_short"
REASON_CAPTION_TOO_LONG = "caption_too_long"
REASON_UNKNOWN_ATTRIBUTE = "unknown_attribute_value"

REASONS: tuple[str, ...] = (
    REASON_MISSING_IMAGE,
    REASON_INVALID_IMAGE_PATH,
    REASON_PATH_ESCAPES_ROOT,
    REASON_IMAGE_NOT_FOUND,
    REASON_NOT_A_REGULAR_FILE,
    REASON_IMAGE_UNREADABLE,
    REASON_EMPTY_IMAGE,
    REASON_IMAGE_TOO_LARGE,
    REASON_DECOMPRESSION_BOMB,
    REASON_TOO_MANY_PIXELS,
    REASON_TRUNCATED,
    REASON_UNDECODABLE,
    REASON_MISSING_ID,
    REASON_DUPLICATE_ID,
    REASON_MISSING_CAPTION,
    REASON_BLANK_CAPTION,
    REASON_CAPTION_TOO_SHORT,
    REASON_CAPTION_TOO_LONG,
    REASON_UNKNOWN_ATTRIBUTE,
)

# The row suite runs per chunk of this many rows: GX costs ~0.5 s per run whatever the size,
# and a chunk holds no image bytes, so large chunks keep the overhead small and memory flat.
DEFAULT_CHUNK_ROWS = 50_000

# Marks the expectation whose reason is the row's own image_error value.
_REASON_FROM_IMAGE_ERROR = "image_error"

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Utf8,
    "reason": pl.Utf8,
    "detail": pl.Utf8,
    "source_file": pl.Utf8,
    "row_index": pl.Int64,
}

_INGEST_ONLY_COLUMNS = ("image_bytes", "image_pixels", "image_error", "image_error_detail", "source_file", "row_index")


@dataclass
class ValidationOutcome:
    """What validation made of a dataset.

    ``valid``: id, content_key, caption, label, image_uri, width, height, one column per
    attribute (canonical vocabulary spelling or null), ``counterfactual_set`` when mapped and
    ``other_attributes`` with an ``attribute_pairs`` layout.
    ``quarantine``: id, reason, detail, source_file (relative to the dataset root), row_index.
    """

    valid: pl.DataFrame
    quarantine: pl.DataFrame
    rows_in: int
    by_reason: dict[str, int]
    expectations: dict[str, Any]

    @property
    def quarantined(self) -> int:
        return self.quarantine.height

    @property
    def quarantined_fraction(self) -> float:
        """quarantined / rows_in (0 for an empty dataset)."""
        return self.quarantined / self.rows_in if self.rows_in else 0.0

    def summary(self) -> dict[str, Any]:
        """The content of ``validation.json``."""
        return {
            "rows_in": self.rows_in,
            "valid": self.valid.height,
            "quarantined": self.quarantined,
            "quarantined_fraction": self.quarantined_fraction,
            "by_reason": dict(self.by_reason),
        }


def ingest_and_validate(
    spec: DatasetSpec,
    *,
    image_store: ImageStore | None = None,
    batch_rows: int = 1024,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    workers: int | None = None,
) -> ValidationOutcome:
    """Stream ``spec``'s dataset through ingest and both expectation suites.

    ``batch_rows`` bounds memory (rows of image bytes held at once); ``chunk_rows`` is the
    size of each GX run over the small per-row frames; ``workers`` decoding threads
    (default: CPU count, at most 8). Raises :class:`DatasetUnreadable` when the dataset cannot be read at all (missing,
    not Parquet, required columns absent). Every row is either valid or quarantined.
    """
    source = open_dataset(spec)
    validator = RowValidator(
        spec, source.plan.attribute_names, counterfactual_set=bool(source.plan.counterfactual_set),
        other_attributes=bool(source.plan.attribute_pairs),
    )
    validator.check_schema(source)
    source.require_columns()  # column types; presence was checked by the schema suite
    frames = ingest(spec, image_store=image_store, batch_rows=batch_rows, workers=workers, source=source)
    return validator.validate(frames, chunk_rows=chunk_rows)


def validate_rows(spec: DatasetSpec, rows: pl.DataFrame, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> ValidationOutcome:
    """Validate an already ingested frame (from :func:`counterfactual_lab.ingest.read.read_ingested`)."""
    fixed = {"id", "content_key", "caption", "label", "counterfactual_set", OTHER_ATTRIBUTES, "image_uri", "width", "height", *_INGEST_ONLY_COLUMNS}
    attributes = [c for c in rows.columns if c not in fixed]
    validator = RowValidator(
        spec, attributes, counterfactual_set="counterfactual_set" in rows.columns,
        other_attributes=OTHER_ATTRIBUTES in rows.columns,
    )
    return validator.validate([rows], chunk_rows=chunk_rows)


def write_validation_outputs(outcome: ValidationOutcome, out_uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``quarantine.parquet``, ``expectations.json`` and ``validation.json`` under ``out_uri``.

    Each file is written atomically; ``validation.json`` comes last, so its presence means
    the other two are complete.
    """
    buffer = io.BytesIO()
    outcome.quarantine.write_parquet(buffer)
    write_bytes_atomic(join(out_uri, "quarantine.parquet"), buffer.getvalue(), storage_options)
    expectations = json.dumps(outcome.expectations, indent=2, default=str).encode()
    write_bytes_atomic(join(out_uri, "expectations.json"), expectations, storage_options)
    summary = json.dumps(outcome.summary(), indent=2).encode()
    write_bytes_atomic(join(out_uri, "validation.json"), summary, storage_options)


class RowValidator:
    """The two expectation suites for one spec, and the chunked run over ingested frames."""

    def __init__(
        self, spec: DatasetSpec, attributes: list[str], *, counterfactual_set: bool = False, other_attributes: bool = False
    ) -> None:
        self.spec = spec
        self.attributes = attributes
        self.counterfactual_set = counterfactual_set
        self.other_attributes = other_attributes  # kept beside the attributes (an attribute_pairs layout)
        self._canonical = {a: {v.casefold(): v for v in spec.vocabulary(a)} for a in attributes}
        self._gx = _GxSuites(spec, attributes)
        self._schema_result: dict[str, Any] | None = None

    def check_schema(self, source: DatasetSource) -> None:
        """Run the schema suite on the dataset's columns; raise if a required one is missing."""
        result = self._gx.run_schema(source.plan.required, source.schema.names)
        self._schema_result = _strip_result(result)
        missing = [
            r["expectation_config"]["kwargs"]["column"] for r in result["results"] if not r["success"]
        ]
        if missing:
            raise DatasetUnreadable(missing_columns_message(source.uri, missing, source.schema.names))

    def validate(self, frames: Iterable[pl.DataFrame], *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> ValidationOutcome:
        seen: dict[str, str] = {}
        valid_parts: list[pl.DataFrame] = []
        quarantine_parts: list[pl.DataFrame] = []
        chunk_results: list[dict[str, Any]] = []
        rows_in = 0
        for chunk in _chunks(frames, chunk_rows):
            rows_in += chunk.height
            chunk = chunk.with_columns(duplicate_of=pl.Series(_duplicates(chunk, seen), dtype=pl.Utf8))
            valid, quarantine, result = self._validate_chunk(chunk)
            valid_parts.append(valid)
            quarantine_parts.append(quarantine)
            chunk_results.append(result)
        valid = pl.concat(valid_parts) if valid_parts else pl.DataFrame(schema=self._valid_schema())
        quarantine = pl.concat(quarantine_parts) if quarantine_parts else pl.DataFrame(schema=QUARANTINE_SCHEMA)
        counts = quarantine.group_by("reason").len().sort("reason").rows()
        expectations = {
            "success": all(r["success"] for r in chunk_results) and (self._schema_result or {}).get("success", True),
            "suite": self._gx.row_suite_json(),
            "schema": self._schema_result,
            "chunks": chunk_results,
        }
        return ValidationOutcome(
            valid=valid,
            quarantine=quarantine,
            rows_in=rows_in,
            by_reason={reason: n for reason, n in counts},
            expectations=expectations,
        )

    def _validate_chunk(self, chunk: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
        checked = chunk.select(
            "id", "caption", "image_error", "image_bytes", "image_pixels", "duplicate_of",
            *[
                pl.Series(a, [v.strip().casefold() if v is not None else None for v in chunk[a].to_list()], dtype=pl.Utf8)
                for a in self.attributes
            ],
        )
        result = self._gx.run_rows(checked.to_pandas())
        failures: dict[int, list[tuple[str, str]]] = {}
        for expectation in result["results"]:
            if expectation["exception_info"].get("raised_exception"):
                raise RuntimeError(
                    f"Great Expectations failed on {expectation['expectation_config']['type']}: "
                    f"{expectation['exception_info'].get('exception_message')}"
                )
            meta = expectation["expectation_config"].get("meta") or {}
            for index in expectation["result"].get("unexpected_index_list") or []:
                row = int(index["index"] if isinstance(index, dict) else index)
                failures.setdefault(row, []).append(self._explain(meta, chunk.row(row, named=True)))
        bad = sorted(failures)
        mask = pl.Series("bad", [False] * chunk.height)
        if bad:
            mask = mask.scatter(bad, True)
        picked = chunk[bad] if bad else chunk.clear()
        quarantine = pl.DataFrame(
            {
                "id": picked["id"],
                "reason": [failures[i][0][0] for i in bad],
                "detail": ["; ".join(d for _, d in failures[i]) for i in bad],
                "source_file": picked["source_file"],
                "row_index": picked["row_index"],
            },
            schema=QUARANTINE_SCHEMA,
        )
        valid = self._valid_columns(chunk.filter(~mask))
        return valid, quarantine, _strip_result(result)

    def _explain(self, meta: dict[str, Any], row: dict[str, Any]) -> tuple[str, str]:
        """(reason, human-readable detail) for one failed expectation on one row."""
        reason = meta.get("reason")
        limits = self.spec.limits
        caption = row["caption"] or ""
        if reason == _REASON_FROM_IMAGE_ERROR:
            return row["image_error"], row["image_error_detail"] or row["image_error"]
        if reason == REASON_IMAGE_TOO_LARGE:
            return reason, f"image has {row['image_bytes']:,} bytes; the limit is {limits.max_image_bytes:,}"
        if reason == REASON_TOO_MANY_PIXELS:
            return reason, (
                f"image is {row['width']}x{row['height']} = {row['image_pixels']:,} pixels; "
                f"the limit is {limits.max_pixels:,}"
            )
        if reason == REASON_MISSING_ID:
            return reason, "id is null"
        if reason == REASON_DUPLICATE_ID:
            return reason, f"id {short_repr(row['id'])} is already used by {row['duplicate_of']}"
        if reason == REASON_MISSING_CAPTION:
            return reason, "caption is null"
        if reason == REASON_BLANK_CAPTION:
            return reason, f"caption is blank ({len(caption)} whitespace characters)"
        if reason == REASON_CAPTION_TOO_SHORT:
            return reason, f"caption has {len(caption)} characters; at least {limits.caption_min_chars} are required"
        if reason == REASON_CAPTION_TOO_LONG:
            return reason, f"caption has {len(caption):,} characters; the limit is {limits.caption_max_chars:,}"
        if reason == REASON_UNKNOWN_ATTRIBUTE:
            attribute = meta["attribute"]
            allowed = ", ".join(self.spec.vocabulary(attribute))
            return reason, f"{attribute} value {short_repr(row[attribute])} is not in the vocabulary ({allowed})"
        raise AssertionError(f"expectation without a known quarantine reason: {meta}")

    def _valid_columns(self, rows: pl.DataFrame) -> pl.DataFrame:
        canonical = [
            pl.Series(a, [self._canonical[a][v.strip().casefold()] if v is not None else None for v in rows[a].to_list()], dtype=pl.Utf8)
            for a in self.attributes
        ]
        extra = (["counterfactual_set"] if self.counterfactual_set else []) + (
            [OTHER_ATTRIBUTES] if self.other_attributes else []
        )
        return rows.select(
            "id", "content_key", "caption", "label", "image_uri",
            pl.col("width").cast(pl.Int64), pl.col("height").cast(pl.Int64),
            *canonical, *extra,
        )

    def _valid_schema(self) -> dict[str, pl.DataType]:
        schema = {"id": pl.Utf8, "content_key": pl.Utf8, "caption": pl.Utf8, "label": pl.Utf8, "image_uri": pl.Utf8,
                  "width": pl.Int64, "height": pl.Int64}
        schema.update({a: pl.Utf8 for a in self.attributes})
        if self.counterfactual_set:
            schema["counterfactual_set"] = pl.Utf8
        if self.other_attributes:
            schema[OTHER_ATTRIBUTES] = pl.Utf8
        return schema


class _GxSuites:
    """An ephemeral GX context holding the schema and row suites of one spec."""

    def __init__(self, spec: DatasetSpec, attributes: list[str]) -> None:
        # slow import (seconds): only when validating
        import great_expectations as gx

        # here, not at the top: it imports great_expectations
        from great_expectations.data_context.types.base import ProgressBarsConfig

        # GX logs an INFO line per context (its own module forces INFO): keep the CLI and Prefect logs readable.
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
        self._gx = gx
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        source = context.data_sources.add_pandas("cflab")
        self._row_suite = context.suites.add(gx.ExpectationSuite(name=f"{spec.name}-rows", expectations=row_expectations(spec, attributes)))
        self._rows = context.validation_definitions.add(
            gx.ValidationDefinition(
                name=f"{spec.name}-rows",
                data=source.add_dataframe_asset("rows").add_batch_definition_whole_dataframe("chunk"),
                suite=self._row_suite,
            )
        )
        self._context = context
        self._schema_asset = source.add_dataframe_asset("schema").add_batch_definition_whole_dataframe("columns")
        self._spec_name = spec.name

    def run_schema(self, required: tuple[str, ...], columns: list[str]) -> dict[str, Any]:
        # here, not at the top: it imports pandas
        import pandas as pd

        gx = self._gx
        suite = self._context.suites.add(
            gx.ExpectationSuite(
                name=f"{self._spec_name}-schema",
                expectations=[gx.expectations.ExpectColumnToExist(column=c) for c in required],
            )
        )
        definition = self._context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{self._spec_name}-schema", data=self._schema_asset, suite=suite)
        )
        frame = pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
        return definition.run(batch_parameters={"dataframe": frame}).to_json_dict()

    def run_rows(self, frame: Any) -> dict[str, Any]:
        result = self._rows.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})
        return result.to_json_dict()

    def row_suite_json(self) -> dict[str, Any]:
        return self._row_suite.to_json_dict()


def row_expectations(spec: DatasetSpec, attributes: list[str]) -> list[Any]:
    """The row suite, in quarantine-priority order; each carries its reason in ``meta``."""
    # here, not at the top: it imports great_expectations
    import great_expectations as gx

    ex = gx.expectations
    limits = spec.limits
    suite = [
        ex.ExpectColumnValuesToBeNull(column="image_error", meta={"reason": _REASON_FROM_IMAGE_ERROR}),
        ex.ExpectColumnValuesToBeBetween(
            column="image_bytes", max_value=limits.max_image_bytes, meta={"reason": REASON_IMAGE_TOO_LARGE}
        ),
        ex.ExpectColumnValuesToBeBetween(
            column="image_pixels", max_value=limits.max_pixels, meta={"reason": REASON_TOO_MANY_PIXELS}
        ),
        ex.ExpectColumnValuesToNotBeNull(column="id", meta={"reason": REASON_MISSING_ID}),
        # Uniqueness across the whole stream: duplicate_of names the row that owns the id.
        ex.ExpectColumnValuesToBeNull(column="duplicate_of", meta={"reason": REASON_DUPLICATE_ID}),
        ex.ExpectColumnValuesToNotBeNull(column="caption", meta={"reason": REASON_MISSING_CAPTION}),
        ex.ExpectColumnValuesToMatchRegex(column="caption", regex=r"\S", meta={"reason": REASON_BLANK_CAPTION}),
        ex.ExpectColumnValueLengthsToBeBetween(
            column="caption", min_value=limits.caption_min_chars, meta={"reason": REASON_CAPTION_TOO_SHORT}
        ),
        ex.ExpectColumnValueLengthsToBeBetween(
            column="caption", max_value=limits.caption_max_chars, meta={"reason": REASON_CAPTION_TOO_LONG}
        ),
    ]
    for attribute in attributes:
        suite.append(
            ex.ExpectColumnValuesToBeInSet(
                column=attribute,
                value_set=[v.casefold() for v in spec.vocabulary(attribute)],
                meta={"reason": REASON_UNKNOWN_ATTRIBUTE, "attribute": attribute},
            )
        )
    return suite


def _chunks(frames: Iterable[pl.DataFrame], chunk_rows: int) -> Iterator[pl.DataFrame]:
    """Regroup the streamed frames into chunks of about ``chunk_rows`` rows."""
    pending: list[pl.DataFrame] = []
    size = 0
    for frame in frames:
        if frame.height == 0:
            continue
        pending.append(frame)
        size += frame.height
        if size >= chunk_rows:
            yield pl.concat(pending)
            pending, size = [], 0
    if pending:
        yield pl.concat(pending)


def _duplicates(chunk: pl.DataFrame, seen: dict[str, str]) -> list[str | None]:
    """Per row: where its id was first seen (None for a first occurrence or a null id)."""
    out: list[str | None] = []
    for id_, file, row in zip(chunk["id"].to_list(), chunk["source_file"].to_list(), chunk["row_index"].to_list()):
        if id_ is None:
            out.append(None)
        elif id_ in seen:
            out.append(seen[id_])
        else:
            seen[id_] = f"row {row} of {file}"
            out.append(None)
    return out


def _strip_result(result: dict[str, Any], keep: int = 20) -> dict[str, Any]:
    """A GX result without the per-row lists (kept in quarantine.parquet instead)."""
    stripped = dict(result)
    stripped["results"] = []
    for item in result.get("results", []):
        item = dict(item)
        body = {k: v for k, v in (item.get("result") or {}).items() if k not in ("unexpected_list", "unexpected_index_list", "unexpected_index_query")}
        for key in ("partial_unexpected_list", "partial_unexpected_index_list", "partial_unexpected_counts"):
            if isinstance(body.get(key), list):
                body[key] = body[key][:keep]
        item["result"] = body
        stripped["results"].append(item)
    return stripped
