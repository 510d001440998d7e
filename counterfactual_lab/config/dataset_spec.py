"""Dataset spec: where a dataset lives, how its columns map, and its attribute vocabularies.

One YAML file per dataset in ``datasets/``; without a spec, the input contract's column
names and :data:`DEFAULT_VOCABULARIES` apply.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from counterfactual_lab.config.yaml_files import load_yaml_file
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.storage.redaction import RedactedInJson, is_secret_key, redact

# Bounds on what a spec can set; each is documented in the README's Datasets section.
MAX_NAME_CHARS = 100
MAX_URI_CHARS = 4096
MAX_COLUMN_CHARS = 256
MAX_ATTRIBUTES = 32
MAX_VOCABULARY_VALUES = 1000
MAX_VALUE_CHARS = 200
MAX_CAPTION_CHARS = 100_000
# PIL refuses images over twice its MAX_IMAGE_PIXELS (89.5 M) outright; decoding a larger one
# would need gigabytes anyway.
MAX_PIXELS = 178_956_970
MAX_IMAGE_BYTES = 1024**3
# Prefect block names: lower-case letters, digits and dashes.
SECRET_BLOCK_PATTERN = r"^[a-z0-9][a-z0-9-]*$"

ColumnName = Annotated[str, Field(min_length=1, max_length=MAX_COLUMN_CHARS)]
VocabularyValue = Annotated[str, Field(min_length=1, max_length=MAX_VALUE_CHARS)]

# The SocialCounterfactuals attribute set; matched case-insensitively.
DEFAULT_VOCABULARIES: dict[str, list[str]] = {
    "gender": ["female", "male", "non-binary"],
    "age": ["child", "young", "middle-aged", "elderly"],
    "race": ["Asian", "Black", "Indian", "Latino", "Middle Eastern", "White"],
}


class ColumnMapping(BaseModel):
    """Dataset column names for each role of the input contract."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: ColumnName = "id"
    image: ColumnName = "image"
    caption: ColumnName = "caption"
    label: ColumnName | None = "label"
    # attribute name -> column name; None means "the default attribute columns that exist"
    attributes: Annotated[dict[ColumnName, ColumnName], Field(max_length=MAX_ATTRIBUTES)] | None = None
    # Evaluate-only datasets (SocialCounterfactuals layout): the column grouping images of one set.
    counterfactual_set: ColumnName | None = None
    # Attributes stored as (type column, value column) pairs, e.g. [[a1_type, a1], [a2_type, a2]]
    # (SocialCounterfactuals: a row's a1_type says which attribute a1 holds). Instead of `attributes`.
    attribute_pairs: Annotated[list[tuple[ColumnName, ColumnName]], Field(max_length=MAX_ATTRIBUTES)] | None = None
    @model_validator(mode="after")
    def _one_attribute_layout(self) -> "ColumnMapping":
        if self.attribute_pairs is not None:
            if self.attributes is not None:
                raise ValueError("give either 'attributes' (one column per attribute) or 'attribute_pairs', not both")
            if not self.attribute_pairs:
                raise ValueError("'attribute_pairs' is empty: list [type column, value column] pairs")
            for type_column, value_column in self.attribute_pairs:
                if not type_column.strip() or not value_column.strip() or type_column == value_column:
                    raise ValueError(
                        f"'attribute_pairs' entry [{type_column!r}, {value_column!r}] needs two different column names"
                    )
        return self


class ValidationLimits(BaseModel):
    """Bounds a row must respect to be valid."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    caption_min_chars: int = Field(1, ge=1, le=MAX_CAPTION_CHARS)
    caption_max_chars: int = Field(1000, ge=1, le=MAX_CAPTION_CHARS)
    max_pixels: int = Field(40_000_000, ge=1, le=MAX_PIXELS)
    max_image_bytes: int = Field(25 * 1024 * 1024, ge=1, le=MAX_IMAGE_BYTES)

    @model_validator(mode="after")
    def _min_within_max(self) -> "ValidationLimits":
        if self.caption_min_chars > self.caption_max_chars:
            raise ValueError(
                f"caption_min_chars ({self.caption_min_chars}) cannot exceed caption_max_chars ({self.caption_max_chars})"
            )
        return self


class DatasetSpec(RedactedInJson, BaseModel):
    """A dataset under audit.

    Its JSON dump (what Prefect stores as a parameter, what a manifest holds) has secrets
    redacted (:class:`~counterfactual_lab.storage.redaction.RedactedInJson`); ``storage_options``
    stays whole in Python for the code that reads the data.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field("dataset", min_length=1, max_length=MAX_NAME_CHARS)
    uri: str = Field(max_length=MAX_URI_CHARS)
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    # attribute -> allowed values; attributes not listed fall back to DEFAULT_VOCABULARIES
    vocabularies: Annotated[
        dict[VocabularyValue, Annotated[list[VocabularyValue], Field(min_length=1, max_length=MAX_VOCABULARY_VALUES)]],
        Field(max_length=MAX_ATTRIBUTES),
    ] = Field(default_factory=dict)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    # A Prefect Secret block whose value is a JSON object of storage options (e.g. {key, secret}),
    # merged under storage_options by the flows (the library never reads Prefect blocks).
    storage_options_secret: str | None = Field(None, pattern=SECRET_BLOCK_PATTERN, max_length=MAX_NAME_CHARS)
    limits: ValidationLimits = Field(default_factory=ValidationLimits)

    @field_validator("uri")
    @classmethod
    def _uri_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("dataset uri is empty")
        return value.strip()

    def vocabulary(self, attribute: str) -> list[str]:
        """Allowed values of ``attribute`` (spec first, then the defaults)."""
        if attribute in self.vocabularies:
            return list(self.vocabularies[attribute])
        if attribute in DEFAULT_VOCABULARIES:
            return list(DEFAULT_VOCABULARIES[attribute])
        raise ConfigError(
            f"attribute {attribute!r} has no vocabulary: add it under 'vocabularies' in the dataset spec"
        )

    def attribute_columns(self, available: list[str]) -> dict[str, str]:
        """attribute -> column actually present, given the dataset's column names ({} with ``attribute_pairs``)."""
        if self.columns.attribute_pairs is not None:
            return {}
        if self.columns.attributes is not None:
            return dict(self.columns.attributes)
        names = set(DEFAULT_VOCABULARIES) | set(self.vocabularies)
        return {name: name for name in sorted(names) if name in available}

    def pair_attributes(self) -> list[str]:
        """The attributes an ``attribute_pairs`` layout fills: every one with a vocabulary
        (the defaults and the spec's). A type naming any other attribute is kept as context
        (``other_attributes``), not audited."""
        if self.columns.attribute_pairs is None:
            return []
        return sorted(set(DEFAULT_VOCABULARIES) | set(self.vocabularies))

    def canonical_value(self, attribute: str, value: str) -> str | None:
        """The vocabulary's spelling of ``value`` (case-insensitive), or None when outside it."""
        folded = value.strip().casefold()
        for allowed in self.vocabulary(attribute):
            if allowed.casefold() == folded:
                return allowed
        return None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "DatasetSpec":
        raw = load_yaml_file(path, "dataset spec")
        return cls.parse_spec(raw, source=f"dataset spec {path}")

    @classmethod
    def parse_spec(cls, raw: Any, source: str = "dataset spec") -> "DatasetSpec":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source} must be a mapping with at least 'uri'")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{source} is invalid: {_first_error(exc, cls)}") from None

    @classmethod
    def for_uri(cls, uri: str) -> "DatasetSpec":
        """The spec used when none is given: input-contract columns, default vocabularies."""
        name = uri.rstrip("/").rsplit("/", 1)[-1].split(".")[0] or "dataset"
        return cls(name=name, uri=uri)


def _first_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """The first validation error as ``key.path: what is wrong (got value)``, one line.

    An unknown key also lists the keys that level accepts (and the nearest spelling), when
    ``model`` is the model that was validated.
    """
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc) or "(root)"
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        known = _known_keys(model, loc[:-1]) if model is not None else []
        message = "unknown key"
        if known:
            near = difflib.get_close_matches(loc[-1], known, n=1)
            message += f" (did you mean {near[0]!r}?)" if near else ""
            message += f"; known keys here: {', '.join(known)}"
        return f"{where}: {message}"
    if err["type"] == "value_error":  # our own validators: the message already names the value
        message = message.removeprefix("Value error, ")
        # "key: ..." from a validator that walks a mapping names a key below this one.
        head, sep, rest = message.partition(": ")
        if sep and head and " " not in head:
            return f"{where}.{head}: {rest}"
        return f"{where}: {message}"
    if err["type"] != "missing" and "input" in err:
        # (A Secret block's name, storage_options_secret, is a name, not a secret.)
        if any(part.endswith("storage_options") or (is_secret_key(part) and part != "storage_options_secret")
               for part in loc):
            # Whatever sits under storage_options (or a secret-looking key) may be a credential.
            message += " (value not shown: it may be a credential)"
        else:
            shown = repr(redact(err["input"]))
            message += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
    return f"{where}: {message}"


def _known_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """Field names of the (nested) model reached by following ``path`` from ``model``."""
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _model_of(fields[part].annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``Model``, ``Model | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
