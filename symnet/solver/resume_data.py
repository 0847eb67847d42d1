"""symnet's resume data: the data layers' positions a snapshot records, and the checks
of their form when a state is restored."""
from __future__ import annotations

import math
import re

from .common import SolverError


def _data_states(net) -> dict:
    """{data layer: position} for the net's data layers whose source has state(): the
    prefetcher's (state after the last batch handed out) when it has one, else the
    source's own (which runs ahead by the batches prefetched)."""
    out = {}
    for layer, feeder in getattr(net, "_feeders", []):
        if hasattr(feeder, "state"):
            out[layer.name] = feeder.state()
            continue
        source = getattr(layer, "data_source", None)
        if source is not None and hasattr(source, "state"):
            out[layer.name] = source.state()
    return out


class ResumeWarning(UserWarning):
    """A restored solver will not continue exactly as the run that wrote the state."""


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _kind(v):
    """What a JSON value is, with its article: "null", "an integer", "a list"."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if _is_int(v):
        return "an integer"
    return {float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(v), f"a {type(v).__name__}")


def _can_seek(layer, feeder):
    """Whether the data layer's position can be saved and set."""
    source = getattr(layer, "data_source", None) or getattr(feeder, "source", None)
    if not callable(getattr(source, "set_state", None)) or \
            not callable(getattr(feeder, "set_state", None)):
        return False
    fn = getattr(source, "fn", None)          # a shared library may lack set_state
    if isinstance(fn, dict) and "next" in fn and fn.get("set_state") is None:
        return False
    return feeder.state() is not None


def _has_known_form(layer):
    """Built-in sources and shared-library sources: their positions have a fixed form."""
    from ..data.base import Source
    from ..data.external import SharedLibrarySource
    return isinstance(getattr(layer, "data_source", None), (Source, SharedLibrarySource))


def _check_form(saved, current, where, field):
    """``saved`` has the form of ``current`` (a position of the same source): the same
    keys, the same kinds of values, integers >= 0 where the current one is; the type
    names equal."""
    name = field or "the position"
    if isinstance(current, dict):
        if not isinstance(saved, dict):
            raise SolverError(f"{where}: {name} is {_kind(saved)}, expected an object")
        if field == "" and saved.get("type") != current.get("type"):
            raise SolverError(f"{where}: saved by a source of type {saved.get('type')!r}, the "
                              f"layer's source is a {current.get('type')!r} source")
        if set(saved) != set(current):
            missing = sorted(set(current) - set(saved))
            unknown = sorted(set(saved) - set(current))
            raise SolverError(f"{where}: {name} has keys {sorted(saved)}, expected "
                              f"{sorted(current)}" + (f" (missing {missing})" if missing
                                                      else "")
                              + (f" (unknown {unknown})" if unknown else ""))
        for k in current:
            _check_form(saved[k], current[k], where, f"{field}.{k}" if field else k)
    elif current is None or saved is None:
        return                                  # an optional value (a key not yet read)
    elif isinstance(current, bool):
        if not isinstance(saved, bool):
            raise SolverError(f"{where}: {name} is {saved!r}, expected true or false")
    elif _is_int(current):
        if not _is_int(saved) or (current >= 0 and saved < 0):
            raise SolverError(f"{where}: {name} is {saved!r}, expected an integer"
                              + (" >= 0" if current >= 0 else ""))
    elif isinstance(current, float):
        if isinstance(saved, bool) or not isinstance(saved, (int, float)) or \
                not math.isfinite(saved):
            raise SolverError(f"{where}: {name} is {saved!r}, expected a finite number")
    elif isinstance(current, str):
        if not isinstance(saved, str):
            raise SolverError(f"{where}: {name} is {saved!r}, expected a string")
        if field == "state" and not re.fullmatch(r"(?:[0-9a-fA-F]{2})*", saved):
            raise SolverError(f"{where}: {name} is not hexadecimal")
    elif isinstance(current, list):
        if not isinstance(saved, list) or len(saved) != len(current):
            raise SolverError(f"{where}: {name} is {_kind(saved)}"
                              + (f" of {len(saved)} items" if isinstance(saved, list) else "")
                              + f", expected a list of {len(current)}")
        for i, (s, c) in enumerate(zip(saved, current)):
            _check_form(s, c, where, f"{field}[{i}]")

