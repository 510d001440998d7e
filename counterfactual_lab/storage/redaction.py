"""Secrets never leave their place: the one rule for what is a secret, and its redaction.

Credentials should come from the environment (``AWS_ACCESS_KEY_ID``, ...), fsspec/boto's own
configuration (``~/.aws``), or a Prefect Secret block named in the config
(``storage_options_secret``). A secret given inline (``storage_options: {key: ..., secret:
...}``) is accepted for convenience, but every place that writes a config or a spec out (the
manifest, the report, Prefect artifacts and flow-run parameters, logs) writes it through
:func:`redact`.

The rule, :func:`is_secret_key`: a mapping key is secret when, lower-cased with ``-`` and spaces
read as ``_``, it is one of :data:`SECRET_KEYS` or ends with one of :data:`SECRET_SUFFIXES`
(``aws_secret_access_key``, ``client_secret``, ``sas_token``, ...). Its value, whatever it is
(a string, a number, a nested mapping), becomes :data:`REDACTED`; ``None`` and empty values stay
as they are (they hide nothing and say "not set"). Strings anywhere are also stripped of a
password in a URL's user-info (``s3://user:pass@host/x`` → ``s3://user:***@host/x``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import SerializationInfo, model_serializer

REDACTED = "***"

SECRET_KEYS: frozenset[str] = frozenset(
    {
        "key", "secret", "token", "password", "passwd", "pwd", "passphrase",
        "session_token", "security_token", "access_token", "refresh_token", "id_token",
        "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_security_token",
        "access_key", "access_key_id", "secret_key", "secret_access_key", "api_key", "apikey",
        "account_key", "private_key", "client_secret", "sas_token", "credential", "credentials",
        "connection_string", "auth", "authorization", "auth_string", "bearer", "cookie",
        "signature", "sig",
    }
)
# Compound names: anything ending like this is a secret too (e.g. "azure_storage_account_key").
SECRET_SUFFIXES: tuple[str, ...] = (
    "_secret", "_token", "_password", "_passwd", "_access_key", "_secret_key", "_api_key",
    "_account_key", "_private_key", "_credentials", "_auth_string",
)

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*):(?P<password>[^@/\s]+)@")


def is_secret_key(name: object) -> bool:
    """Whether a mapping key with this name holds a secret (see the module docstring)."""
    if not isinstance(name, str):
        return False
    folded = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return folded in SECRET_KEYS or folded.endswith(SECRET_SUFFIXES)


def redact_text(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` replaced."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (mappings, lists, tuples, strings, pydantic models) with secrets replaced.

    Never mutates ``obj``. A pydantic model is redacted as its JSON dump (a plain dict comes
    back). Values under a secret key become :data:`REDACTED` unless empty; other values are
    walked recursively.
    """
    if isinstance(obj, Mapping):
        return {key: (_hide(value) if is_secret_key(key) else redact(value)) for key, value in obj.items()}
    if isinstance(obj, list):
        return [redact(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(redact(value) for value in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    if hasattr(obj, "model_dump") and callable(obj.model_dump):
        return redact(obj.model_dump(mode="json"))
    return obj


def _hide(value: Any) -> Any:
    if value is None or value == "" or value == {} or value == []:
        return value
    return REDACTED


def secret_values(obj: Any) -> set[str]:
    """Every non-empty string (or number) held under a secret key anywhere in ``obj``.

    For masking text that was never a config (log messages, error messages): see
    :func:`mask`.
    """
    found: set[str] = set()

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(inner, secret or is_secret_key(key))
        elif isinstance(value, list | tuple | set | frozenset):
            for inner in value:
                walk(inner, secret)
        elif secret and isinstance(value, str | int | float) and not isinstance(value, bool):
            text = str(value)
            if len(text) >= 4:  # a one-letter "secret" would mask half of every message
                found.add(text)
        elif hasattr(value, "model_dump") and callable(value.model_dump):
            walk(value.model_dump(), secret)

    walk(obj, False)
    return found


def mask(text: str, secrets: set[str] | frozenset[str]) -> str:
    """``text`` with every occurrence of each secret value replaced (longest first)."""
    for value in sorted(secrets, key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return redact_text(text)


# The secret values this process has been handed (inline storage options of the configs and
# specs it loaded, Secret blocks it resolved), so that text that was never a config (an error
# message, a traceback) can be masked before it is printed: :func:`mask_known`.
_known: set[str] = set()


def remember_secrets(*holders: Any) -> None:
    """Remember the secret values in ``holders`` (configs, specs, option dicts) for :func:`mask_known`."""
    for holder in holders:
        _known.update(secret_values(holder))


def mask_known(text: str) -> str:
    """``text`` with every secret this process was handed, and any URL password, replaced."""
    return mask(text, frozenset(_known))


class RedactedInJson:
    """Mixin for pydantic models that may hold secrets: their JSON-mode dump is redacted.

    ``model.model_dump()`` (Python mode) keeps every value, for the code that needs the
    credentials; ``model.model_dump(mode="json")`` and ``model.model_dump_json()`` — what
    Prefect (through FastAPI's ``jsonable_encoder``) stores as flow-run parameters, and what
    manifests are made of — go through :func:`redact`.
    """

    @model_serializer(mode="wrap")
    def _redacted_in_json(self, handler: Any, info: SerializationInfo) -> Any:
        data = handler(self)
        return redact(data) if info.mode_is_json() else data
