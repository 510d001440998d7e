"""What a security reviewer asks of model loading: safetensors only, no remote code.

Every ``from_pretrained`` in the library goes through :func:`safe_load_kwargs` and, for
local folders, :func:`check_local_model_dir` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from counterfactual_lab.errors import UnsafeModelError

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


# Config files in which transformers and diffusers name code to import from the model folder.
CODE_REFERENCING_FILES = ("config.json", "model_index.json", "preprocessor_config.json", "processor_config.json",
                          "tokenizer_config.json", "image_processor_config.json")


def check_no_custom_code(model: str) -> None:
    """Refuse a local model folder that ships code: Python files, or an ``auto_map`` (the key
    transformers follows to import a model's own classes). Nothing is imported or run: the
    folder is listed and its JSON configs are read as data."""
    import json

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
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # an unreadable config fails at load time with its own message
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
