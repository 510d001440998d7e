"""Reading the project's YAML files (audit configs, dataset specs) with bounds a hostile file cannot pass.

One loader for every YAML file a user hands the tool, so each gets the same guarantees:

* **Size**: a file over :data:`MAX_YAML_BYTES` is refused before it is parsed.
* **Alias expansion**: YAML aliases (``*name``) are allowed (they are handy for repeating a
  model path), but the document is measured as it would be once every alias is expanded;
  over :data:`MAX_YAML_NODES` values it is refused. A "billion laughs" file of nested
  aliases is a few hundred bytes that expand to 10⁹ values: PyYAML itself builds it cheaply
  (aliases share one object), but anything that then walks it (validation, JSON, hashing)
  does not. The measure is linear in the file size (each node is sized once), so the refusal
  is immediate. A recursive alias (a node that contains itself) is refused too.
* **Syntax errors** name the file, the line and the column: ``config audit.yaml line 4,
  column 9: mapping values are not allowed here``.
* **Duplicate keys** in one mapping are an error naming the key and its line (PyYAML would keep
  the last one silently, so a config could say two things and mean one).
* Only plain data: the safe loader, so no tag can build a Python object.
* **Integers** of more than :data:`MAX_INT_DIGITS` digits are refused naming their line (Python's
  own limit, 4,300 digits, says neither where nor which key).
* The file is read only when it is a regular file (a FIFO is never opened:
  :mod:`counterfactual_lab.storage.regular_files`).

Errors are :class:`~counterfactual_lab.errors.ConfigError`, one line each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from counterfactual_lab.errors import ConfigError
from counterfactual_lab.storage.regular_files import NotARegularFile, read_regular_file

# A config or spec is a few kilobytes; a megabyte is already a thousand times that.
MAX_YAML_BYTES = 1024 * 1024
# Values in the document with every alias expanded (a value: a scalar, list or mapping).
MAX_YAML_NODES = 100_000
# Digits of one integer: a count, a seed or a size has at most 20.
MAX_INT_DIGITS = 100


class _BoundedSafeLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if value_node.tag == "tag:yaml.org,2002:int" and _digits(value_node) > MAX_INT_DIGITS:
                raise ConfigError(f"line {value_node.start_mark.line + 1}: key {key!r} holds an integer of "
                                  f"{_digits(value_node):,} digits; at most {MAX_INT_DIGITS} are read")
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: PyYAML's own error names it below
                break
            if duplicate:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in one mapping "
                    f"(first on line {seen[key] + 1})"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Node) -> int:
        digits = _digits(node)
        if digits > MAX_INT_DIGITS:
            raise ConfigError(f"line {node.start_mark.line + 1}: an integer of {digits:,} digits; at most {MAX_INT_DIGITS} are read")
        return super().construct_yaml_int(node)


def _digits(node: Node) -> int:
    return sum(ch.isdigit() or ch in "abcdefABCDEF" for ch in str(node.value))


_BoundedSafeLoader.add_constructor("tag:yaml.org,2002:int", _BoundedSafeLoader.construct_yaml_int)


def expanded_size(node: Node, limit: int = MAX_YAML_NODES) -> int:
    """How many values ``node`` stands for once every alias is expanded (stops counting past ``limit``).

    Aliased nodes are the same Python object in PyYAML's node graph, so each node is sized
    once and reused: linear time however deep the aliases nest. Raises :class:`ConfigError`
    on a node that contains itself (a recursive alias).
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(current: Node) -> int:
        key = id(current)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise ConfigError(f"line {current.start_mark.line + 1}: a recursive alias (a value that contains itself)")
        in_progress.add(key)
        total = 1
        if isinstance(current, SequenceNode):
            children: list[Node] = list(current.value)
        elif isinstance(current, MappingNode):
            children = [part for pair in current.value for part in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:  # saturate: the exact size of a bomb does not matter
                total = limit + 1
                break
        in_progress.discard(key)
        sizes[key] = total
        return total

    return size(node)


def load_yaml_text(text: str, what: str) -> Any:
    """Parse one YAML document under the bounds of this module; ``what`` names it in errors."""
    if len(text.encode("utf-8", errors="replace")) > MAX_YAML_BYTES:
        raise ConfigError(f"{what} is larger than {MAX_YAML_BYTES // 1024} KiB; a config or spec is a few KiB")
    loader = _BoundedSafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node) > MAX_YAML_NODES:
            raise ConfigError(
                f"{what} expands to more than {MAX_YAML_NODES} values once its aliases are expanded "
                "(nested aliases?); refused"
            )
        return loader.construct_document(node)
    except ConfigError as exc:
        raise ConfigError(f"{what} {exc}" if str(exc).startswith("line ") else str(exc)) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {_describe(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    except RecursionError:
        raise ConfigError(f"{what} nests its values too deeply to be a config") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, what: str) -> Any:
    """Read and parse the YAML file at ``path``; ``what`` ("config", "dataset spec") names it in errors."""
    path = Path(path)
    label = f"{what} {path}"
    try:
        data, size = read_regular_file(str(path), MAX_YAML_BYTES)
        if data is None:
            raise ConfigError(f"{label} is larger than {MAX_YAML_BYTES // 1024} KiB ({size} bytes); a config or spec is a few KiB")
        text = data.decode("utf-8")
    except NotARegularFile as exc:
        raise ConfigError(f"{label} is a {exc.kind}, not a regular file") from None
    except FileNotFoundError:
        raise ConfigError(f"{label} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label} is not UTF-8 text (byte {exc.start})") from None
    except IsADirectoryError:
        raise ConfigError(f"{label} is a directory, not a YAML file") from None
    except PermissionError:
        raise ConfigError(f"{label} cannot be read (permission denied)") from None
    return load_yaml_text(text, label)


def _describe(exc: yaml.MarkedYAMLError) -> str:
    """``line L, column C: problem`` from PyYAML's error (its marks are 0-based)."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "syntax error"
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
