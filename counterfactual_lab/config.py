"""The audit config: one YAML file says what to audit, how to generate, judge and evaluate.

Every key has a default so a config only states what differs. See the README's
"Audit config" section for the documented keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from counterfactual_lab.errors import ConfigError
from counterfactual_lab.spec import DatasetSpec, _first_error

GenerationMethod = Literal["instruct-pix2pix", "img2img", "ledits"]


class DatasetRef(BaseModel):
    """Either a spec file, inline spec fields, or both (inline fields override the file)."""

    model_config = ConfigDict(extra="allow")

    uri: str | None = None
    spec: str | None = None

    def resolve(self, base_dir: Path | None = None, uri_override: str | None = None) -> DatasetSpec:
        fields: dict[str, Any] = {}
        if self.spec:
            spec_path = Path(self.spec)
            if not spec_path.is_absolute() and base_dir is not None and not spec_path.exists():
                spec_path = base_dir / spec_path
            fields = DatasetSpec.from_yaml(spec_path).model_dump()
        inline = {k: v for k, v in self.model_dump().items() if k != "spec" and v is not None}
        fields.update(inline)
        if uri_override:
            fields["uri"] = uri_override
        if not fields.get("uri"):
            raise ConfigError("config 'dataset' needs a 'uri' (or a 'spec' file that has one)")
        return DatasetSpec.parse_spec(fields, source="config 'dataset'")


class GenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    method: GenerationMethod = "img2img"
    model: str = "./.cflab/models/img2img"
    revision: str | None = None
    steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0)
    seed: int = Field(0, ge=0, description="first seed; candidates use seed, seed+1, ...")
    seeds_per_target: int = Field(2, ge=1, le=64)
    keep_per_target: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1, le=1024)
    resolution: int | None = Field(None, ge=8, description="square side in pixels; None keeps the source size (rounded to 8)")
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _keep_within_seeds(self) -> "GenerationConfig":
        if self.keep_per_target > self.seeds_per_target:
            raise ValueError(
                f"keep_per_target ({self.keep_per_target}) cannot exceed seeds_per_target ({self.seeds_per_target})"
            )
        return self

    def fingerprint_fields(self) -> dict[str, Any]:
        """What identifies the generator: everything that changes the output pixels."""
        return {
            "method": self.method,
            "model": self.model,
            "revision": self.revision,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "resolution": self.resolution,
            "params": dict(sorted(self.params.items())),
            # LEDITS++ seeds its one shared inversion per source with this seed, so it changes
            # the pixels of every item; the other methods seed per item (the item's own seed).
            **({"seed": self.seed} if self.method == "ledits" else {}),
        }


class JudgeThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: float = 0.2
    direction: float = 0.2
    image: float = 0.7


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = "./.cflab/models/clip"
    revision: str | None = None
    thresholds: JudgeThresholds = Field(default_factory=JudgeThresholds)
    check_attribute: bool = True
    attribute_prompt: str = "a photo of a {value} person"


class AuditModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = "./.cflab/models/clip"
    revision: str | None = None
    labels: list[str] = Field(default_factory=lambda: ["doctor", "nurse"])
    prompt: str = "a photo of a {label}"
    queries: list[str] = Field(default_factory=lambda: ["a photo of a doctor"])
    top_k: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    bootstrap_samples: int = Field(1000, ge=50)
    bootstrap_seed: int = Field(0, ge=0, description="seed of the bootstrap resamples (docs/metrics.md)")
    confidence: float = Field(0.95, gt=0, lt=1)
    min_group_size: int = Field(
        5, ge=1, description="groups with fewer images are left out of selection rate, parity and equalized odds"
    )


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str = "./out"
    storage_options: dict[str, Any] = Field(default_factory=dict)


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_runner: Literal["threads", "ray"] = "threads"
    max_workers: int = Field(4, ge=1)
    ray_address: str | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    ingest_batch_rows: int = Field(1024, ge=1)
    max_invalid_fraction: float = Field(0.05, ge=0, le=1)
    retries: int = Field(3, ge=0)
    retry_delay_seconds: float = Field(2.0, ge=0)


class AuditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: DatasetRef
    attributes: dict[str, list[str]] = Field(default_factory=lambda: {"gender": ["female", "male"]})
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    audit: AuditModelConfig = Field(default_factory=AuditModelConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    # Where relative paths in the config resolve; set by from_yaml.
    base_dir: str | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "AuditConfig":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config {path} must be a mapping")
        raw.setdefault("base_dir", str(path.resolve().parent))
        return cls.parse_config(raw, source=f"config {path}")

    @classmethod
    def parse_config(cls, raw: dict[str, Any], source: str = "config") -> "AuditConfig":
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{source} is invalid: {_first_error(exc)}") from None

    def dataset_spec(self, uri_override: str | None = None) -> DatasetSpec:
        """The dataset to audit: the config's, or ``uri_override`` (a dataset URI, or a spec YAML file)."""
        base = Path(self.base_dir) if self.base_dir else None
        if uri_override and uri_override.endswith((".yaml", ".yml")):
            spec = DatasetSpec.from_yaml(uri_override)
        else:
            spec = self.dataset.resolve(base, uri_override)
        for attribute, targets in self.attributes.items():
            for value in targets:
                if spec.canonical_value(attribute, value) is None:
                    raise ConfigError(
                        f"attributes.{attribute}: {value!r} is not in the vocabulary {spec.vocabulary(attribute)}"
                    )
        return spec
