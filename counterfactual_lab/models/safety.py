"""What a security reviewer asks of model loading: safetensors only, no remote code.

Every ``from_pretrained`` in the library goes through :func:`safe_load_kwargs` and, for
local folders, :func:`check_local_model_dir` first. Remote code is refused in layers: the
loaders pass ``trust_remote_code=False`` (so the library never imports a model's own code),
turn the library's "custom code" error into :class:`UnsafeModelError`
(:func:`remote_code_refusal`), and refuse a model whose config asks for its own classes even
when the library fell back to a built-in one (:func:`refuse_custom_code_config`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from counterfactual_lab.errors import ConfigError, UnsafeModelError
from counterfactual_lab.storage.regular_files import NotARegularFile, read_regular_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def is_local_model(model: str) -> bool:
    return Path(model).expanduser().exists()


def check_local_model_dir(model: str) -> None:
    """Refuse a local model folder whose weights exist only as pickle checkpoints."""
    root = Path(model).expanduser()
    if not root.exists():
        return
    if not root.is_dir():
        raise UnsafeModelError(f"model {model} is a file; give the folder written by save_pretrained")
    safetensors = list(root.rglob("*.safetensors"))
    pickles = [p for p in root.rglob("*") if p.suffix in PICKLE_SUFFIXES and p.name != "training_args.bin"]
    if pickles and not safetensors:
        names = ", ".join(sorted(str(p.relative_to(root)) for p in pickles)[:3])
        raise UnsafeModelError(
            f"model {model} has only pickle checkpoints ({names}); convert them to safetensors — "
            "pickle files can run arbitrary code when loaded"
        )


# A model's JSON configs are kilobytes (a tokenizer's can reach a few megabytes); a larger
# "config" is not read into memory.
MAX_CONFIG_BYTES = 64 * 1024 * 1024

# Config files in which transformers and diffusers name code to import from the model folder.
CODE_REFERENCING_FILES = ("config.json", "model_index.json", "preprocessor_config.json", "processor_config.json",
                          "tokenizer_config.json", "image_processor_config.json")


def check_no_custom_code(model: str) -> None:
    """Refuse a local model folder that ships code: Python files, or an ``auto_map`` (the key
    transformers follows to import a model's own classes). Nothing is imported or run: the
    folder is listed and its JSON configs are read as data."""

    root = Path(model).expanduser()
    if not root.is_dir():
        return
    code = sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))
    if code:
        raise UnsafeModelError(
            f"model {model} ships Python code ({', '.join(code[:3])}); custom model code is never run — "
            "use a model whose classes transformers/diffusers provide"
        )
    for path in sorted(p for name in CODE_REFERENCING_FILES for p in root.rglob(name)):
        try:
            text, size = read_regular_file(str(path), MAX_CONFIG_BYTES)
        except NotARegularFile as exc:
            # A FIFO would block this check, and the loader after it, forever.
            raise UnsafeModelError(
                f"model {model}: {path.relative_to(root)} is a {exc.kind}, not a regular file; "
                "a model folder holds regular files only"
            ) from None
        except OSError:
            continue  # an unreadable config fails at load time with its own message
        if text is None:
            raise UnsafeModelError(
                f"model {model}: {path.relative_to(root)} has {size:,} bytes, over the "
                f"{MAX_CONFIG_BYTES:,}-byte limit for a JSON config"
            )
        try:
            data = json.loads(text.decode("utf-8"))
        except ValueError:
            continue  # not JSON: the loader names it
        if isinstance(data, dict) and "auto_map" in data:
            raise UnsafeModelError(
                f"model {model} needs custom code ({path.relative_to(root)} has an auto_map); "
                "remote code is never run — use a model whose classes transformers/diffusers provide"
            )


def safe_load_kwargs(model: str, revision: str | None) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` that forbid pickle weights and remote code."""
    check_local_model_dir(model)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
    if revision and not is_local_model(model):
        kwargs["revision"] = revision
    return kwargs


def refuse_custom_code_config(model: str, config: Any) -> None:
    """Refuse a loaded config whose ``auto_map`` names the model's own classes.

    With ``trust_remote_code=False`` transformers never imports that code, but for a known
    ``model_type`` it quietly loads its built-in class instead, which may not be the
    architecture the weights were trained for: refuse rather than audit with the wrong model.
    """
    auto_map = getattr(config, "auto_map", None)
    if auto_map:
        classes = ", ".join(sorted({str(v) for v in auto_map.values()}))[:200]
        raise UnsafeModelError(
            f"model {model} needs custom code (its config's auto_map names {classes}); remote code is never run "
            "— use a model whose classes transformers/diffusers provide"
        )


def remote_code_refusal(model: str, exc: BaseException) -> UnsafeModelError | None:
    """The :class:`UnsafeModelError` for a library's "this repository contains custom code"
    error (raised because ``trust_remote_code`` is False), or None for any other error."""
    text = str(exc)
    if "trust_remote_code" not in text and "custom code" not in text:
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return UnsafeModelError(
        f"model {model} needs custom code to load ({first[:300]}); remote code is never run "
        "— use a model whose classes transformers/diffusers provide"
    )


def check_model_reference(key: str, model: str) -> None:
    """A local model folder must exist, hold safetensors weights and ship no code; a hub id
    cannot be checked offline and is left to loading time."""

    path = Path(model).expanduser()
    if path.exists():
        check_local_model_dir(model)
        check_no_custom_code(model)
        return
    if model.startswith((".", "/", "~")) or Path(model).is_absolute():
        raise ConfigError(f"{key}: {model} does not exist (a local model folder; build the demo's with `cflab models tiny DIR`)")
