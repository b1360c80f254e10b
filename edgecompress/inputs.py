"""Loaders for user-supplied files: any failure becomes a ``ConfigError`` (exit 2) naming the file.

Recipes, target profiles, reports and ONNX artifacts come from users, CI checkouts and other
machines. They are read here, never with a bare ``open``/``yaml.safe_load``: a binary or Latin-1
file, an oversized file, a YAML alias bomb or a self-referencing alias, a timestamp where JSON
has none, or an ONNX file whose external data is missing or lies outside its folder all end as
one message that names the file (and key), never as a traceback.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from edgecompress.errors import BackendUnavailable, ConfigError

#: Largest recipe/profile file read (bytes); real ones are a few KiB.
MAX_YAML_BYTES = 1 << 20
#: Most alias references (``*name``) one YAML document may contain.
MAX_YAML_ALIASES = 64
#: Most nodes a YAML document may have once every alias is expanded (an alias bomb is refused
#: while composing, before anything is built from it).
MAX_YAML_NODES = 100_000
#: Deepest nesting of mappings/sequences accepted.
MAX_YAML_DEPTH = 50


class _YamlLimit(Exception):
    """A YAML document exceeds one of the limits above."""


class _LimitedLoader(yaml.SafeLoader):
    """``SafeLoader`` that counts aliases and the expanded size of the composed document."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102 - PyYAML hook
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise _YamlLimit(f"more than {MAX_YAML_ALIASES} alias references (*name)")
        return super().compose_node(parent, index)

    def compose_document(self) -> Any:  # noqa: D102 - PyYAML hook
        node = super().compose_document()
        _expanded_size(node, {}, set(), 0)
        return node


def _expanded_size(node: Any, memo: dict[int, int], active: set[int], depth: int) -> int:
    """Node count with every alias expanded; refuses cycles, deep nesting and huge expansions."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise _YamlLimit("an alias refers to the mapping/sequence that contains it (a cycle)")
    if depth > MAX_YAML_DEPTH:
        raise _YamlLimit(f"nested deeper than {MAX_YAML_DEPTH} levels")
    active.add(key)
    size = 1
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    else:
        children = []
    for child in children:
        size += _expanded_size(child, memo, active, depth + 1)
        if size > MAX_YAML_NODES:
            raise _YamlLimit(f"expands to more than {MAX_YAML_NODES:,} nodes through aliases "
                             "(an alias bomb?)")
    active.discard(key)
    memo[key] = size
    return size


def read_user_text(path: str | Path, what: str, *, max_bytes: int = MAX_YAML_BYTES) -> str:
    """The UTF-8 text of a user file, or ``ConfigError`` naming ``what`` and the file.

    Args:
        path: The file.
        what: What it is, for messages ("recipe file", "target profile").
        max_bytes: Refuse larger files.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{what} {path}: not a regular file")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ConfigError(f"{what} {path}: {size:,} bytes, larger than the {max_bytes:,} "
                              "bytes accepted")
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{what} {path}: cannot be read: {err.strerror or err}") from None
    if b"\x00" in data:
        raise ConfigError(f"{what} {path}: binary file (NUL byte at offset {data.index(0)}), "
                          "expected UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte 0x{data[err.start]:02x} at "
                          f"offset {err.start}); save it as UTF-8") from None


def check_plain_data(obj: Any, source: str, where: str = "") -> None:
    """Refuse what YAML can express but JSON (and so the run's manifests) cannot.

    Keys must be strings, numbers, booleans or null; values JSON types (YAML timestamps,
    ``!!binary`` and ``!!set`` are not). Floats may be inf/nan here: the typed fields decide.
    """
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ConfigError(f"{source}: {where or '(top level)'}: key {key!r} is a "
                                  f"{type(key).__name__}; use a string")
            check_plain_data(value, source, f"{where}.{key}" if where else str(key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            check_plain_data(value, source, f"{where}.{i}" if where else str(i))
    elif not isinstance(obj, (str, int, float, bool)) and obj is not None:
        raise ConfigError(f"{source}: {where or '(top level)'}: a YAML {type(obj).__name__} "
                          f"({str(obj)[:40]!r}) is not accepted; quote it as a string")


def load_user_yaml(path: str | Path, what: str) -> Any:
    """Parse a user YAML file with limits (size, aliases, expansion, depth, plain data only).

    Raises:
        ConfigError: naming ``what``, the file and the problem.
    """
    text = read_user_text(path, what)
    try:
        data = yaml.load(text, Loader=_LimitedLoader)  # noqa: S506 - a SafeLoader subclass
    except _YamlLimit as err:
        raise ConfigError(f"{what} {path}: refused: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path}: not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{what} {path}: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:  # e.g. a malformed !!timestamp
        raise ConfigError(f"{what} {path}: not valid YAML: {err}") from None
    check_plain_data(data, f"{what} {path}")
    return data


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is neither inf nor NaN."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def check_onnx_file(path: str | Path) -> None:
    """Check an ONNX artifact a user hands in, before any tool reads it.

    The file must exist and parse; every external-data tensor must name a file inside the
    model's folder that exists and holds the bytes the tensor claims (``onnx.load`` would
    otherwise read outside the folder, or fail later with a traceback).

    Raises:
        ConfigError: naming the file (and tensor) at fault.
        BackendUnavailable: the ``onnx`` package is not installed.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"ONNX file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"ONNX file {path}: not a regular file")
    try:
        import onnx
        from onnx.external_data_helper import uses_external_data
    except ImportError:
        raise BackendUnavailable("reading ONNX files needs the 'onnx' package: pip install "
                                 "'edgecompress[onnx]'") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ConfigError(f"{path}: not a readable ONNX model ({type(err).__name__}: "
                          f"{first})") from None
    folder = path.resolve().parent
    tensors = list(model.graph.initializer)
    for node in model.graph.node:  # Constant nodes may hold external tensors too
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    for tensor in tensors:
        if not uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        culprit = f"{path}: tensor {tensor.name!r} external data {location!r}"
        if not location or Path(location).is_absolute():
            raise ConfigError(f"{culprit}: the location must be a file name relative to the "
                              "model's folder")
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise ConfigError(f"{culprit}: points outside the model's folder {folder}")
        if not target.is_file():
            raise ConfigError(f"{culprit}: file not found ({target})")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", 0))
        except ValueError:
            raise ConfigError(f"{culprit}: offset/length are not integers") from None
        if offset < 0 or length < 0 or offset + length > target.stat().st_size:
            raise ConfigError(f"{culprit}: offset {offset} + length {length} is past the end of "
                              f"the file ({target.stat().st_size} bytes)")
