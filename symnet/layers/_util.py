"""Helpers shared by layer definitions: Caffe's spellings of 2-D sizes and axes."""
from __future__ import annotations

import math

from ..errors import ShapeError


def spatial(name, values, h=None, w=None, default=None):
    """Caffe's ``kernel_size``/``kernel_h``+``kernel_w`` style: repeated field with 0, 1
    or 2 values, or explicit _h/_w fields. Returns (h, w)."""
    if h is not None or w is not None:
        if h is None or w is None:
            raise ValueError(f"{name}_h and {name}_w must be given together")
        if values:
            raise ValueError(f"{name} and {name}_h/{name}_w are mutually exclusive")
        return int(h), int(w)
    values = list(values or [])
    if not values:
        if default is None:
            raise ValueError(f"{name} is required (as {name} or {name}_h and {name}_w)")
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise ValueError(f"{name} has {len(values)} values; 2-D layers take 1 or 2")


def canonical_axis(axis, ndim, what):
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{what}: axis {axis} out of range for a {ndim}-d blob")
    return axis % ndim


def split_at(shape, axis):
    """(outer, size, inner) of a shape around ``axis``."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
