"""The Op base class and the leaf ops: Input, Param, Constant.

An op knows its arity, infers its output shape from its arguments' shapes, gives its
vector-Jacobian product as more graph (``vjp``), and defines its semantics in NumPy
(``reference``), which the reference backend runs and every other backend matches.
"""
from __future__ import annotations

import numpy as np

from ..errors import GraphError, ShapeError
from ..runtime.memory import SyncedMemory


class Op:
    kind = "op"          # the op family's name, used in kernel names and reports
    nargs = None         # fixed arity, or None when variadic

    label = None         # a short human name ("sigmoid", "mul"); defaults to kind

    def arity(self, given: int) -> int:
        return given if self.nargs is None else self.nargs

    def attrs(self) -> dict:
        """Hyper-parameters that, with the kind, identify what the op computes."""
        return {}

    def key(self) -> tuple:
        return (self.kind, tuple(sorted((k, _hashable(v)) for k, v in self.attrs().items())))

    def describe(self) -> str:
        attrs = ", ".join(f"{k}={v}" for k, v in self.attrs().items())
        return f"{self.label or self.kind}({attrs})" if attrs else (self.label or self.kind)

    def check_arity(self, shapes):
        if self.nargs is not None and len(shapes) != self.nargs:
            raise GraphError(f"{self.describe()}: got {len(shapes)} arguments, "
                             f"expected {self.nargs}")

    def infer_shape(self, shapes) -> tuple:
        raise NotImplementedError

    def vjp(self, args, out, g) -> list:
        """Cotangents of the arguments (Tensors or None for zero) given ``g`` = dL/d(out)."""
        raise NotImplementedError(f"{self.describe()} has no vjp rule")

    def reference(self, arrays, shape):
        raise NotImplementedError

    def shape_error(self, shapes, expected) -> ShapeError:
        return ShapeError(f"{self.describe()}: got argument shapes {list(shapes)}, "
                          f"expected {expected}")


def _hashable(v):
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


class Leaf(Op):
    nargs = 0

    def __init__(self, shape):
        self.shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in self.shape):
            raise ShapeError(f"{self.kind}: negative size in shape {self.shape}")

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        return self.shape


class Input(Leaf):
    """A value fed by the caller of a compiled function."""
    kind = "input"

    def __init__(self, name, shape):
        super().__init__(shape)
        self.name = name

    def attrs(self):
        return {"name": self.name, "shape": self.shape}

    def vjp(self, args, out, g):
        return []


class Param(Leaf):
    """A learnable value, held between calls and initialised by a filler."""
    kind = "param"

    def __init__(self, name, shape, value, filler=None):
        super().__init__(shape)
        self.name = name
        self.filler = filler
        self.set_value(value, self.shape)

    def attrs(self):
        return {"name": self.name, "shape": self.shape}

    def get_value(self):
        """The value as a host array (writing into it is seen by the next call)."""
        return self._mem.host_write()

    def get_memory(self) -> SyncedMemory:
        """The value's memory, which compiled calls read where it is current (kept on a
        device between calls)."""
        return self._mem

    def set_value(self, array, shape):
        array = np.asarray(array, dtype=np.float32)
        if array.shape != tuple(shape):
            raise ShapeError(f"param '{self.name}': value has shape {array.shape}, "
                             f"expected {tuple(shape)}")
        self._mem = SyncedMemory.wrap(np.array(array, dtype=np.float32, order="C"))

    def vjp(self, args, out, g):
        return []


class Constant(Leaf):
    """A fixed array baked into the graph."""
    kind = "constant"

    def __init__(self, value):
        value = np.array(value, dtype=np.float32, order="C")
        super().__init__(value.shape)
        self._value = value
        self._value.setflags(write=False)

    def key(self):
        return (self.kind, self.shape, self._value.tobytes())

    def get_value(self):
        return self._value

    def set_value(self, array, shape):
        raise GraphError("a Constant's value cannot be changed; use a Param")

    def vjp(self, args, out, g):
        return []
