"""The NumPy reference: runs any graph op by op. It defines the semantics that every
other backend is tested against; obviously right beats fast.
"""
from __future__ import annotations

import numpy as np

from . import ops
from .errors import GraphError, ShapeError


def evaluate(graph, output_ids, feeds: dict, dtype=np.float32, overrides=None) -> list:
    """Values of ``output_ids`` given ``feeds`` {input node id: array}.

    ``overrides`` maps node ids (params, constants) to values used instead of their
    stored ones. Computation runs in ``dtype`` (float32, or float64 for gradcheck).
    """
    overrides = overrides or {}
    values = {}
    for n in graph.ancestors(list(output_ids)):
        op = graph.op(n)
        shape = graph.shape(n)
        if n in overrides:
            v = overrides[n]
        elif isinstance(op, ops.Input):
            if n not in feeds:
                raise GraphError(f"input '{op.name}' is needed but was not given")
            v = feeds[n]
        elif isinstance(op, (ops.Param, ops.Constant)):
            v = op.get_value()
        else:
            v = op.reference([values[a] for a in graph.args(n)], shape)
        v = np.asarray(v, dtype=dtype)
        if v.shape != shape:
            raise ShapeError(f"{op.describe()} (node {n}): reference produced shape "
                             f"{v.shape}, expected {shape}")
        values[n] = v
    # outputs are fresh, writable, C-contiguous arrays: never views of a feed, a param's
    # storage or a read-only broadcast
    return [np.array(values[o], dtype=dtype, order="C", copy=True) for o in output_ids]
