"""Helpers shared by layer definitions: Caffe's spellings of 2-D sizes and axes, and
the check of a layer parameter.

A parameter a layer refuses is a ValueError saying the field (as the prototxt spells
it, e.g. ``convolution_param.dilation``), the value found and what is expected;
``registry.call`` turns it into a LayerError that also names the layer and its type:

    layer 'conv1' (Convolution) in net.prototxt: convolution_param.stride 0: must be >= 1
"""
from __future__ import annotations

import math
import numbers

from ..errors import ShapeError


def show(value):
    """A parameter value as the message prints it."""
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def param_message(field, value, expected):
    return f"{field} {show(value)}: must be {expected}"


def require(ok, field, value, expected, error=ValueError):
    """Refuse a layer parameter unless ``ok``: ``<field> <value>: must be <expected>``."""
    if not ok:
        raise error(param_message(field, value, expected))


def is_int(value):
    """An integer (or a float with an integer value), not a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, numbers.Real) and float(value).is_integer()


def spatial(name, values, h=None, w=None, default=None, param=None, list_name=None,
            minimum=None, expected=None):
    """Caffe's ``kernel_size``/``kernel_h``+``kernel_w`` style: repeated field with 0, 1
    or 2 values, or explicit _h/_w fields. Returns (h, w).

    ``param`` (e.g. ``"convolution_param"``) and ``list_name`` (the repeated field,
    default ``name``) name the fields in errors; with ``minimum`` every value given
    must be an integer >= minimum (``expected`` says why)."""
    list_name = list_name or name
    prefix = f"{param}." if param else ""
    if h is not None or w is not None:
        if h is None or w is None:
            raise ValueError(f"{prefix}{name}_h {show(h)} and {prefix}{name}_w {show(w)}: "
                             "must be given together")
        if values:
            raise ValueError(f"{prefix}{list_name} {show(list(values))} and "
                             f"{prefix}{name}_h/{name}_w are mutually exclusive")
        given = [(f"{prefix}{name}_h", h), (f"{prefix}{name}_w", w)]
        out = (h, w)
    else:
        values = list(values or [])
        if len(values) > 2:
            raise ValueError(f"{prefix}{list_name} {show(values)}: has {len(values)} "
                             "values; 2-D layers take 1 or 2")
        if not values and default is None:
            raise ValueError(f"{prefix}{list_name} (not set): must be given (as {list_name} "
                             f"or {name}_h and {name}_w)")
        shown = values[0] if len(values) == 1 else values
        given = [(f"{prefix}{list_name}", shown)] if values else []
        out = ((default, default) if not values else
               (values[0], values[0]) if len(values) == 1 else tuple(values))
    for field, value in given:
        if minimum is not None:
            each = value if isinstance(value, list) else [value]
            require(all(is_int(v) and v >= minimum for v in each), field, value,
                    expected or f"an integer >= {minimum}")
    return int(out[0]), int(out[1])


def canonical_axis(axis, ndim, field):
    """Caffe's CanonicalAxisIndex: ``axis`` in [-ndim, ndim), negative counting from
    the end; ``field`` names the parameter in the error."""
    require(is_int(axis) and -ndim <= axis < ndim, field, axis,
            f"in [{-ndim}, {ndim}) for a {ndim}-d bottom (out of range)", ShapeError)
    return int(axis) % ndim


def split_at(shape, axis):
    """(outer, size, inner) of a shape around ``axis``."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def random_stream(name):
    """The Philox key of a random layer (Dropout, STOCHASTIC pooling): from the layer's
    name, so every backend draws the same numbers, and, when this process trains as
    rank r of N > 1 (data-parallel, ``symnet.data.get_world()``), from r too: as Caffe
    seeds each solver with ``random_seed + solver_rank``, ranks draw their own masks
    rather than the same mask for their i-th images."""
    from .. import data
    key = sum(ord(c) * 131 ** i for i, c in enumerate(name)) & 0xFFFFFFFF
    world = data.get_world()
    if world.size > 1:
        key = (key ^ (0x9E3779B9 * (world.rank + 1))) & 0xFFFFFFFF
    return key
