"""Caffe Python layers as graph ops: host callbacks with their own forward/backward.

``PythonTop(runner, k)`` is top k of a Python layer, computed from its bottoms (and
learnable blobs); ``PythonGrad(runner, k, i)`` is the gradient of argument i given
the cotangent of top k, from the layer's hand-written backward (which is linear in
the top diff, so summing over tops is exact). Both are fusion boundaries; codegen
runs each layer call once per step as a host step.

A host layer without tops (a Caffe Python layer that only writes files or logs,
HDF5Output) still runs at every forward: its runner gives one marker top (the count of
its calls), which the Net keeps as a state update of an ``EffectCount`` (a 1-value
state, never learned or saved), so the forward computes it.
"""
from __future__ import annotations

import numpy as np

from .base import Op, Param


class PythonTop(Op):
    kind = "python"

    def __init__(self, runner, k):
        self.runner, self.k = runner, int(k)
        self.label = f"{runner.name}"

    def attrs(self):
        return {"layer": self.runner.name, "top": self.k}

    def infer_shape(self, shapes):
        self.runner.check_arg_shapes(shapes)
        return self.runner.top_shapes[self.k]

    def vjp(self, args, out, g):
        from .. import functions as F
        tops = self.runner.top_tensors
        return [F.graph_of(g).add(PythonGrad(self.runner, self.k, i), list(args) + tops + [g])
                if self.runner.differentiable(i) else None for i in range(len(args))]

    def reference(self, arrays, shape):
        return self.runner.forward_arrays(arrays)[self.k]


class PythonGrad(Op):
    kind = "python_grad"

    def __init__(self, runner, k, i):
        self.runner, self.k, self.i = runner, int(k), int(i)
        self.label = f"{runner.name}_grad"

    def attrs(self):
        return {"layer": self.runner.name, "top": self.k, "arg": self.i}

    def infer_shape(self, shapes):
        return tuple(shapes[self.i])

    def vjp(self, args, out, g):
        raise NotImplementedError(f"Python layer '{self.runner.name}': its hand-written "
                                  "backward cannot be differentiated again")

    def reference(self, arrays, shape):
        n = self.runner.n_args
        args, tops, g = arrays[:n], arrays[n:-1], arrays[-1]
        return self.runner.backward_arrays(args, tops, self.k, g, [self.i])[self.i]


class EffectCount(Param):
    """The state a host layer without tops writes at each forward (its call count): a
    1-value blob of its own, outside the learnable params, so the call is an output of
    every forward."""

    def __init__(self, name):
        from ..runtime.blob import Blob
        self.blob = Blob((1,), name)
        super().__init__(name, (1,), np.zeros(1, np.float32))

    def get_value(self):
        return self.blob.data

    def get_memory(self):
        return self.blob.data_mem
