"""Secrets never leave their place: the one rule for what is a secret, and its redaction.

Credentials should come from the environment (``AWS_ACCESS_KEY_ID``, ...), fsspec/boto's own
configuration (``~/.aws``), or a Prefect Secret block named in the config
(``storage_options_secret``). A secret given inline (``storage_options: {key: ..., secret:
...}``) is accepted for convenience, but every place that writes a config or a spec out (the
manifest, the report, Prefect artifacts and flow-run parameters, logs) writes it through
:func:`redact`.

The rule, :func:`is_secret_key`, reads a mapping key as words whatever its spelling: snake
case, kebab case, camel case, Pascal case or upper case (``SSECustomerKey``,
``SecretAccessKey``, ``SESSION_TOKEN`` and ``sse_customer_key`` are all ``sse customer key``,
``secret access key``, ``session token``). A key is secret when its words

* anywhere: are one of :data:`SECRET_KEYS` or end like one of :data:`SECRET_SUFFIXES`
  (``aws_secret_access_key``, ``client_secret``, ``sas_token``, ``sse_customer_key``, ...);
* **under** ``storage_options`` **at any depth** (``client_kwargs``, ``s3_additional_kwargs``,
  ``config_kwargs`` ...): also when the last word is ``key``, or any word is one of
  :data:`SECRET_WORDS` (``*secret*``, ``*token*``, ``*password*``, credentials). Outside
  storage options that broad rule would hide ``content_key`` and ``max_new_tokens``; inside
  them every such name is how a library spells a credential.

A secret key's value, whatever it is (a string, a number, a nested mapping), becomes
:data:`REDACTED`; ``None`` and empty values stay as they are (they hide nothing and say "not
set"). Strings anywhere are also stripped of a password in a URL's user-info
(``s3://user:pass@host/x`` → ``s3://user:***@host/x``), and that password joins the known
secrets (:func:`secret_values`), so it is masked where a library quotes it without the scheme
(botocore: ``Invalid bucket name "user:pass@host"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

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
        "signature", "sig", "sse_customer_key", "customer_key", "copy_source_sse_customer_key",
    }
)
# Compound names: anything ending like this is a secret too (e.g. "azure_storage_account_key").
SECRET_SUFFIXES: tuple[str, ...] = (
    "_secret", "_token", "_password", "_passwd", "_access_key", "_secret_key", "_api_key",
    "_account_key", "_private_key", "_credentials", "_auth_string", "_customer_key", "_secret_access_key",
    "_session_token", "_access_token",
)
# Under storage_options, a name holding any of these words is a secret (see the module docstring).
SECRET_WORDS: frozenset[str] = frozenset(
    {"secret", "secrets", "token", "tokens", "password", "passwd", "pwd", "passphrase", "credential", "credentials",
     "auth", "authorization", "signature", "cookie", "sas"}
)
# The mapping keys whose values are fsspec/boto storage options: the broad rule holds below them.
STORAGE_OPTIONS_KEYS: frozenset[str] = frozenset({"storage_options"})

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*):(?P<password>[^@/\s]+)@")


_CAMEL_LOWER_UPPER = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")  # sessionToken -> session_Token
_CAMEL_ACRONYM = re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])")  # SSECustomer -> SSE_Customer


def key_words(name: str) -> list[str]:
    """The words of a mapping key in any spelling, lower case: ``SSECustomerKey`` → ``[sse, customer, key]``."""
    spaced = _CAMEL_ACRONYM.sub("_", _CAMEL_LOWER_UPPER.sub("_", name.strip()))
    return [word for word in re.split(r"[\s\-_.]+", spaced.lower()) if word]


def is_secret_key(name: object, *, in_storage_options: bool = False) -> bool:
    """Whether a mapping key with this name holds a secret; ``in_storage_options``: the key is
    anywhere under a ``storage_options`` mapping, where the broad rule holds (module docstring)."""
    if not isinstance(name, str):
        return False
    words = key_words(name)
    if not words:
        return False
    folded = "_".join(words)
    if folded in SECRET_KEYS or folded.endswith(SECRET_SUFFIXES):
        return True
    return in_storage_options and (words[-1] == "key" or any(word in SECRET_WORDS for word in words))


def _opens_storage_options(name: object) -> bool:
    return isinstance(name, str) and "_".join(key_words(name)) in STORAGE_OPTIONS_KEYS


def redact_text(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` replaced."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)


def redact(obj: Any, *, in_storage_options: bool = False) -> Any:
    """A copy of ``obj`` (mappings, lists, tuples, strings, pydantic models) with secrets replaced.

    Never mutates ``obj``. A pydantic model is redacted as its JSON dump (a plain dict comes
    back). Values under a secret key become :data:`REDACTED` unless empty; other values are
    walked recursively (below a ``storage_options`` key with the broad rule).
    """
    if isinstance(obj, Mapping):
        redacted = {}
        for key, value in obj.items():
            inside = in_storage_options or _opens_storage_options(key)
            if is_secret_key(key, in_storage_options=in_storage_options):
                redacted[key] = _hide(value)
            else:
                redacted[key] = redact(value, in_storage_options=inside)
        return redacted
    if isinstance(obj, list):
        return [redact(value, in_storage_options=in_storage_options) for value in obj]
    if isinstance(obj, tuple):
        return tuple(redact(value, in_storage_options=in_storage_options) for value in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    if hasattr(obj, "model_dump") and callable(obj.model_dump):
        return redact(obj.model_dump(mode="json"), in_storage_options=in_storage_options)
    return obj


def _hide(value: Any) -> Any:
    if value is None or value == "" or value == {} or value == []:
        return value
    return REDACTED


MIN_SECRET_CHARS = 4  # a one-letter "secret" would mask half of every message


def secret_values(obj: Any) -> set[str]:
    """Every non-empty string (or number) held under a secret key anywhere in ``obj``, and the
    password of every URL among its strings (:func:`url_passwords`).

    For masking text that was never a config (log messages, error messages): see
    :func:`mask`.
    """
    found: set[str] = set()

    def walk(value: Any, secret: bool, options: bool) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(inner, secret or is_secret_key(key, in_storage_options=options),
                     options or _opens_storage_options(key))
        elif isinstance(value, list | tuple | set | frozenset):
            for inner in value:
                walk(inner, secret, options)
        elif secret and isinstance(value, str | int | float) and not isinstance(value, bool):
            text = str(value)
            if len(text) >= MIN_SECRET_CHARS:
                found.add(text)
        elif isinstance(value, str):
            found.update(url_passwords(value))
        elif hasattr(value, "model_dump") and callable(value.model_dump):
            walk(value.model_dump(), secret, options)

    walk(obj, False, False)
    return found


def url_passwords(text: str) -> set[str]:
    """The passwords in the ``scheme://user:password@host`` URLs of ``text`` (as written, and
    percent-decoded), each of at least :data:`MIN_SECRET_CHARS` characters."""
    found = set()
    for match in _URL_PASSWORD.finditer(text):
        password = match.group("password")
        for value in (password, unquote(password)):
            if len(value) >= MIN_SECRET_CHARS:
                found.add(value)
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


def mask_exception(exc: BaseException) -> BaseException:
    """``exc`` (and the exceptions it was raised from) with :func:`mask_known` applied to its
    message in place: its ``args`` and an ``OSError``'s ``strerror``/``filename``. Returns ``exc``.

    What a failed flow run stores as its state message, and a traceback prints, is built from
    these, so masking them here keeps a credential an error quotes out of Prefect's database.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        try:
            current.args = tuple(mask_known(a) if isinstance(a, str) else a for a in current.args)
            if isinstance(current, OSError):
                for name in ("strerror", "filename", "filename2"):
                    value = getattr(current, name, None)
                    if isinstance(value, str):
                        setattr(current, name, mask_known(value))
        except (AttributeError, TypeError):  # an exception type with read-only fields: left as it is
            pass
        stack.extend([current.__cause__, current.__context__])
    return exc


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
