"""Credentials for a run: Prefect Secret blocks named in the config, and masking in logs.

The library never imports Prefect, so a ``storage_options_secret`` (in ``output`` or in the
dataset spec) is resolved here: the block's value, a JSON object of fsspec/s3fs options such
as ``{"key": ..., "secret": ...}``, is merged *under* the inline ``storage_options`` (an inline
``endpoint_url`` stays). The resolved options live only in this process's objects: their JSON
dumps, which are what Prefect stores, are redacted (:mod:`counterfactual_lab.storage.redaction`).

:func:`mask_secrets_in_logs` also hides every secret value of the run from every log record
(console and Prefect UI alike), in case a library puts one in a message.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

from prefect.blocks.system import Secret

from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.config.dataset_spec import DatasetSpec
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.storage.redaction import (
    mask,
    mask_exception,
    remember_secrets,
    secret_values,
)


def load_secret_options(block_name: str, key: str) -> dict[str, Any]:
    """The storage options held by the Prefect Secret block ``block_name`` (``key`` names the
    config key that asked for it, for the error)."""

    try:
        value = Secret.load(block_name, _sync=True).get()
    except ValueError as exc:
        raise ConfigError(f"{key}: no Prefect Secret block named {block_name!r} ({exc}); "
                          f"create it with Secret(value={{...}}).save({block_name!r})") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: the Prefect Secret block {block_name!r} must hold a JSON object of storage options")
    remember_secrets(value)  # masked in any error line cflab prints (redaction.mask_known)
    return value


def resolve_secret_blocks(config: AuditConfig, spec: DatasetSpec) -> tuple[AuditConfig, DatasetSpec]:
    """``config`` and ``spec`` with the storage options of the Secret blocks they name merged in."""
    if spec.storage_options_secret:
        found = load_secret_options(spec.storage_options_secret, "dataset storage_options_secret")
        spec = spec.model_copy(update={"storage_options": {**found, **spec.storage_options}})
    output = config.output
    if output.storage_options_secret:
        found = load_secret_options(output.storage_options_secret, "output.storage_options_secret")
        output = output.model_copy(update={"storage_options": {**found, **output.storage_options}})
        config = config.model_copy(update={"output": output})
    return config, spec


class SecretMaskingFilter(logging.Filter):
    """Replaces the run's secret values in a record before any handler writes it: its message,
    its exception's traceback (``exc_info``, ``exc_text``: an error message may quote a
    credential) and its stack (``stack_info``)."""

    _formatter = logging.Formatter()

    def __init__(self, secrets: set[str]) -> None:
        super().__init__(name="cflab-secret-mask")
        self.secrets = frozenset(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
            return True
        masked = mask(message, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:
            # Formatted here, masked, and handed on as text: a formatter appends exc_text and
            # never formats an exc_info that is gone.
            text = record.exc_text or self._formatter.formatException(record.exc_info)
            record.exc_text, record.exc_info = mask(text, self.secrets), None
        elif record.exc_text:
            record.exc_text = mask(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = mask(record.stack_info, self.secrets)
        return True


def mask_secrets_in_logs(*holders: Any) -> None:
    """Mask every secret value found in ``holders`` (configs, specs, options) in all log output.

    The filter goes on every handler of the root logger and of Prefect's loggers (console and
    the API handler that ships logs to the Prefect UI); calling it again adds the new values.
    """
    secrets: set[str] = set()
    for holder in holders:
        secrets |= secret_values(holder)
    remember_secrets(*holders)  # and in error lines cflab prints (redaction.mask_known)
    if not secrets:
        return
    loggers = [logging.getLogger()] + [
        logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("prefect")
    ]
    for logger in loggers:
        for handler in logger.handlers:
            existing = [f for f in handler.filters if isinstance(f, SecretMaskingFilter)]
            for old in existing:
                secrets |= old.secrets
                handler.removeFilter(old)
            handler.addFilter(SecretMaskingFilter(secrets))


@contextlib.contextmanager
def errors_masked() -> Iterator[None]:
    """Re-raise any error with every known secret masked in its message (``mask_exception``):
    a flow's failure message is stored by Prefect (its state message) and printed by cflab."""
    try:
        yield
    except BaseException as exc:
        mask_exception(exc)
        raise
