"""Caffe Python layers as graph ops: host callbacks with their own forward/backward.

``PythonTop(runner, k)`` is top k of a Python layer, computed from its bottoms (and
learnable blobs); ``PythonGrad(runner, k, i)`` is the gradient of argument i given
the cotangent of top k, from the layer's hand-written backward (which is linear in
the top diff, so summing over tops is exact). Both are fusion boundaries; codegen
runs each layer call once per step as a host step.
"""
from __future__ import annotations

from .base import Op


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
