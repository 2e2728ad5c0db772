"""Parameter records as JSON and back, validated again on the way in.

Records (frozen dataclasses, possibly nested, with tuples and optionals) cross
process boundaries as JSON: between pipeline tasks, in shard plans. Kubeflow hands
structs back with every number a double, so integers are restored where the record
says ``int``; a record's own checks run again when it is rebuilt, so a tampered or
stale record is refused with the parameter named.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from components.errors import InputError

_R = TypeVar("_R")


def to_record(obj: Any) -> dict[str, Any]:
    """A parameter record as plain JSON data (tuples become lists)."""
    data: dict[str, Any] = _plain(dataclasses.asdict(obj))
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_json(obj: Any) -> str:
    """A parameter record as JSON text."""
    return json.dumps(to_record(obj), sort_keys=True)


def from_json(cls: type[_R], text: str) -> _R:
    """The record of type ``cls`` from :func:`to_json`'s output, validated again."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as err:
        raise InputError(f"{cls.__name__} is not valid JSON: {err}") from None
    return from_record(cls, data)


def from_record(cls: type[_R], data: Mapping[str, Any]) -> _R:
    """The record of type ``cls`` from :func:`to_record`'s output, validated again.

    Raises:
        InputError: Unknown fields, or a value the record refuses.
    """
    if not isinstance(data, Mapping):
        raise InputError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{cls.__name__} has no parameter {', '.join(unknown)}")
    values = {name: _convert(hints[name], value) for name, value in data.items()}
    return cls(**values)


def _convert(hint: Any, value: Any) -> Any:
    """A JSON value as the type ``hint`` names (nested records, tuples, optionals)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        return None if value is None else _convert(options[0], value)
    if dataclasses.is_dataclass(hint):
        return from_record(hint, value)  # type: ignore[arg-type]
    if origin is tuple and isinstance(value, Sequence) and not isinstance(value, str):
        args = get_args(hint)
        inner = args[0] if args else Any
        return tuple(_convert(inner, v) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)  # Kubeflow's structs hold every number as a double
    return value
