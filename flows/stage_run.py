"""What every stage of one run reads: the config, where the run lives, its store and publisher."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from prefect import get_run_logger

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.config.intersections import joint_name, joint_values
from counterfactual_lab.errors import DataOverLimit
from counterfactual_lab.ingest.validation import (
    ValidationOutcome,
    write_validation_outputs,
)
from counterfactual_lab.judge.drift import drift_attribute_names
from counterfactual_lab.plan.person_words import PersonWords
from counterfactual_lab.runs.location import RunLocation
from counterfactual_lab.runs.publisher import RunPublisher
from counterfactual_lab.storage.files import ImageStore
from counterfactual_lab.tasks.runners import with_runtime_retries
from counterfactual_lab.tasks.validate import validate_dataset


@dataclass
class StageRun:
    """What every stage of one run reads: the config, where the run lives, its store and publisher."""

    config: AuditConfig
    location: RunLocation
    store: ImageStore
    publisher: RunPublisher
    evaluate: bool
    started_at: datetime
    logger: logging.Logger | logging.LoggerAdapter = field(repr=False)

    @classmethod
    def start(cls, config: AuditConfig, location: RunLocation, evaluate: bool) -> "StageRun":
        """Open the run's store and folder; an earlier manifest of this run id is removed first,
        so it cannot vouch for the files this run is about to replace."""
        options = location.storage_options
        run = cls(
            config=config, location=location, store=ImageStore(location.out_uri, options), evaluate=evaluate,
            publisher=RunPublisher(location.out_uri, location.run_id, location.spec.name, options),
            started_at=datetime.now(timezone.utc), logger=get_run_logger(),
        )
        run.logger.info("run %s: dataset %s -> %s", location.run_id, location.spec.uri, run.publisher.run_uri)
        if run.publisher.mark_incomplete():
            run.logger.info("run %s: the earlier manifest was removed; the run is incomplete until it is "
                            "published again", location.run_id)
        return run

    @property
    def device(self) -> str:
        return self.config.runtime.device

    @property
    def vocabulary(self) -> dict[str, list[str]]:
        return {attribute: self.location.spec.vocabulary(attribute) for attribute in self.config.attributes}

    @property
    def judge_vocabulary(self) -> dict[str, list[str]]:
        """:attr:`vocabulary` with each intersection's joint values (``race+gender``: ``Black male``, …),
        so the judge checks a joint edit against every other combination."""
        vocabulary = self.vocabulary
        joint = {joint_name(names): list(joint_values(names, vocabulary)) for names in self.config.intersections}
        return {**vocabulary, **joint}

    @property
    def person_words(self) -> PersonWords | None:
        """The ``{person}`` words of the run's values (joint ones included); None when no probe or label
        template has ``{person}`` (nothing is asked per word)."""
        if not self.config.audit.person_templates():
            return None
        return PersonWords(self.vocabulary, self.config.intersections)

    @property
    def drift_vocabulary(self) -> dict[str, list[str]]:
        """The values of the other protected attributes whose drift the judge reads (judge.drift_attributes)."""
        names = drift_attribute_names(self.config.judge, list(self.config.attributes))
        return {attribute: self.location.spec.vocabulary(attribute) for attribute in names}

    @property
    def generator_key(self) -> str | None:
        generator = self.location.models.get("generator")
        return generator.key if generator else None

    def validate(self, spec: Any) -> ValidationOutcome:
        """Ingest and validate ``spec``'s dataset (a task, retried on transient storage errors)."""
        return with_runtime_retries(validate_dataset, self.config)(spec, self.store, self.config.runtime.ingest_batch_rows)

    def publish_validation(self, outcome: ValidationOutcome) -> ValidationOutcome:
        """Write quarantine and validation files; stop the run when too many rows were quarantined."""
        write_validation_outputs(outcome, self.publisher.run_uri, self.location.storage_options)
        limit = self.config.runtime.max_invalid_fraction
        if outcome.quarantined_fraction > limit:
            raise DataOverLimit(
                f"{outcome.quarantined} of {outcome.rows_in} rows ({outcome.quarantined_fraction:.1%}) were quarantined, "
                f"over runtime.max_invalid_fraction={limit:.1%}; see {self.publisher.run_uri}/quarantine.parquet"
            )
        return outcome
