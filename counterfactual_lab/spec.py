"""Dataset spec: where a dataset lives, how its columns map, and its attribute vocabularies.

One YAML file per dataset in ``datasets/``; without a spec, the input contract's column
names and :data:`DEFAULT_VOCABULARIES` apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from counterfactual_lab.errors import ConfigError

# The SocialCounterfactuals attribute set; matched case-insensitively.
DEFAULT_VOCABULARIES: dict[str, list[str]] = {
    "gender": ["female", "male", "non-binary"],
    "age": ["child", "young", "middle-aged", "elderly"],
    "race": ["Asian", "Black", "Indian", "Latino", "Middle Eastern", "White"],
}


class ColumnMapping(BaseModel):
    """Dataset column names for each role of the input contract."""

    model_config = ConfigDict(extra="forbid")

    id: str = "id"
    image: str = "image"
    caption: str = "caption"
    label: str | None = "label"
    # attribute name -> column name; None means "the default attribute columns that exist"
    attributes: dict[str, str] | None = None
    # Evaluate-only datasets (SocialCounterfactuals layout): the column grouping images of one set.
    counterfactual_set: str | None = None
    # Attributes stored as (type column, value column) pairs, e.g. [[a1_type, a1], [a2_type, a2]]
    # (SocialCounterfactuals: a row's a1_type says which attribute a1 holds). Instead of `attributes`.
    attribute_pairs: list[tuple[str, str]] | None = None

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

    model_config = ConfigDict(extra="forbid")

    caption_min_chars: int = Field(1, ge=1)
    caption_max_chars: int = Field(1000, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    max_image_bytes: int = Field(25 * 1024 * 1024, ge=1)


class DatasetSpec(BaseModel):
    """A dataset under audit."""

    model_config = ConfigDict(extra="forbid")

    name: str = "dataset"
    uri: str
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    # attribute -> allowed values; attributes not listed fall back to DEFAULT_VOCABULARIES
    vocabularies: dict[str, list[str]] = Field(default_factory=dict)
    storage_options: dict[str, Any] = Field(default_factory=dict)
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
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"dataset spec {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"dataset spec {path} is not valid YAML: {exc}") from None
        return cls.parse_spec(raw, source=str(path))

    @classmethod
    def parse_spec(cls, raw: Any, source: str = "dataset spec") -> "DatasetSpec":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source} must be a mapping with at least 'uri'")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{source} is invalid: {_first_error(exc)}") from None

    @classmethod
    def for_uri(cls, uri: str) -> "DatasetSpec":
        """The spec used when none is given: input-contract columns, default vocabularies."""
        name = uri.rstrip("/").rsplit("/", 1)[-1].split(".")[0] or "dataset"
        return cls(name=name, uri=uri)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"{where}: {err['msg']}"
