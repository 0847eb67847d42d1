"""The computation graph: a networkx MultiDiGraph of ops, and Tensor handles on its nodes.

Each node carries ``op`` (an :class:`symnet.ops.Op`), ``shape`` (a tuple of ints) and
``name`` (optional, used in error messages and kernel names). An edge ``u -> v`` with
key ``k`` says that ``u`` is argument ``k`` of ``v``; a MultiDiGraph keeps both edges
of ``x * x``.
"""
from __future__ import annotations

import contextlib
import itertools
import math

import networkx as nx

from .errors import GraphError, ShapeError


class Graph:
    """A growing graph of ops. Nodes are never removed, so Tensors stay valid."""

    def __init__(self):
        self.nx = nx.MultiDiGraph()
        self._ids = itertools.count()
        self.layer_tag = None      # the Caffe layer being built (for timing and reports)

    def add(self, op, inputs=(), name=None) -> "Tensor":
        inputs = list(inputs)
        for t in inputs:
            if not isinstance(t, Tensor):
                raise GraphError(f"{op.describe()}: argument {t!r} is not a Tensor")
            if t.graph is not self:
                raise GraphError(
                    f"{op.describe()}: argument {t.label()} belongs to another graph; "
                    "tensors of different graphs cannot be combined")
        try:
            shape = op.infer_shape([t.shape for t in inputs])
        except ShapeError as e:
            # name the tensors too: they carry the user's (or Caffe's) names
            where = f" building '{name}'" if name else ""
            labels = ", ".join(f"{t.label()} {t.shape}" for t in inputs)
            raise ShapeError(f"{e}{where} [arguments: {labels}]" if inputs else
                             f"{e}{where}") from None
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ShapeError(f"{op.describe()}: inferred a negative size in shape {shape} "
                             f"from arguments {[t.shape for t in inputs]}")
        nid = next(self._ids)
        self.nx.add_node(nid, op=op, shape=shape, name=name, layer=self.layer_tag)
        for k, t in enumerate(inputs):
            self.nx.add_edge(t.id, nid, key=k)
        return Tensor(self, nid)

    def op(self, nid):
        return self.nx.nodes[nid]["op"]

    def shape(self, nid):
        return self.nx.nodes[nid]["shape"]

    def args(self, nid) -> list:
        """Argument node ids of ``nid`` in argument order."""
        edges = sorted(self.nx.in_edges(nid, keys=True), key=lambda e: e[2])
        return [u for u, _, _ in edges]

    def tensor(self, nid) -> "Tensor":
        return Tensor(self, nid)

    def ancestors(self, nids) -> list:
        """The nodes needed to compute ``nids``, in a deterministic topological order."""
        needed, stack = set(nids), list(nids)
        pred = self.nx.pred
        while stack:                       # one walk from all nodes at once
            for a in pred[stack.pop()]:
                if a not in needed:
                    needed.add(a)
                    stack.append(a)
        # every edge runs from an older node to a newer one (a node's arguments exist
        # before it), so ascending ids are the lexicographically smallest topological order
        return sorted(needed)

    def clone(self, outputs, replace, substitute=None) -> list:
        """Theano's clone: ``outputs`` recomputed with some nodes replaced.

        ``replace`` maps Tensors of this graph to Tensors that stand in for them (new
        inputs, say). ``substitute(node, mapping)``, when given, is asked for each node
        in topological order, once the nodes before it are cloned (``mapping``: node id
        to the id standing in for it): a Tensor to stand in for the node, or None. Nodes
        not depending on a replaced one are shared, not copied. Returns the new output
        Tensors.
        """
        mapping = {old.id: new.id for old, new in replace.items()}
        outs = [o.id for o in outputs]
        for n in self.ancestors(outs):
            if n in mapping:
                continue
            if substitute is not None:
                stand_in = substitute(n, mapping)
                if stand_in is not None:
                    mapping[n] = stand_in.id
                    continue
            args = self.args(n)
            new_args = [mapping.get(a, a) for a in args]
            if new_args != args:
                node = self.nx.nodes[n]
                saved, self.layer_tag = self.layer_tag, node.get("layer")
                mapping[n] = self.add(node["op"], [Tensor(self, a) for a in new_args],
                                      name=node["name"]).id
                self.layer_tag = saved
        return [Tensor(self, mapping.get(o, o)) for o in outs]

    def verify(self, nids=None):
        """Re-infer every shape and check arguments; raises ShapeError on mismatch."""
        nodes = self.ancestors(nids) if nids is not None else list(self.nx.nodes)
        for n in nodes:
            op = self.op(n)
            arg_shapes = [self.shape(a) for a in self.args(n)]
            if len(arg_shapes) != op.arity(len(arg_shapes)):
                raise GraphError(f"{op.describe()}: has {len(arg_shapes)} arguments, "
                                 f"expected {op.arity(len(arg_shapes))}")
            shape = tuple(op.infer_shape(arg_shapes))
            if shape != self.shape(n):
                raise ShapeError(f"{op.describe()} (node {n}): recorded shape {self.shape(n)} "
                                 f"but arguments {arg_shapes} give {shape}")


_graphs = [Graph()]


def default_graph() -> Graph:
    return _graphs[-1]


@contextlib.contextmanager
def graph_scope(graph: Graph | None = None):
    """Build tensors into ``graph`` (a new one by default) inside the block."""
    graph = graph or Graph()
    _graphs.append(graph)
    try:
        yield graph
    finally:
        _graphs.pop()


class Tensor:
    """A handle on one node of a graph: an op's result with a concrete shape.

    Arithmetic operators build elementwise ops; ``==`` keeps Python identity
    (Tensors are hashable), use :func:`symnet.eq` for elementwise equality.
    """

    __array_priority__ = 1000   # numpy defers to Tensor's reflected operators

    def __init__(self, graph: Graph, nid: int):
        self.graph = graph
        self.id = nid

    # ---- node data
    @property
    def op(self):
        return self.graph.op(self.id)

    @property
    def shape(self) -> tuple:
        return self.graph.shape(self.id)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype(self):
        return "float32"

    @property
    def name(self):
        return self.graph.nx.nodes[self.id]["name"]

    @name.setter
    def name(self, value):
        self.graph.nx.nodes[self.id]["name"] = value

    @property
    def args(self) -> list:
        return [Tensor(self.graph, a) for a in self.graph.args(self.id)]

    @property
    def value(self):
        """The current value of a Param or Constant (a float32 numpy array)."""
        return self.op.get_value()

    @value.setter
    def value(self, array):
        self.op.set_value(array, self.shape)

    def label(self) -> str:
        return f"'{self.name}'" if self.name else f"<{self.op.kind} #{self.id}>"

    def __repr__(self):
        return f"Tensor({self.label()}, shape={self.shape})"

    def __hash__(self):
        return hash((id(self.graph), self.id))

    def __eq__(self, other):
        return isinstance(other, Tensor) and other.graph is self.graph and other.id == self.id

    def __bool__(self):
        raise TypeError("the truth value of a symbolic Tensor is unknown; "
                        "use symnet.where for conditions")

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d Tensor")
        return self.shape[0]

    def __iter__(self):
        raise TypeError("a symbolic Tensor cannot be iterated; slice it or use symnet.split")

    # ---- operators: elementwise ops (symnet.functions builds them)
    def __add__(self, o): return _fn().add(self, o)
    def __radd__(self, o): return _fn().add(o, self)
    def __sub__(self, o): return _fn().sub(self, o)
    def __rsub__(self, o): return _fn().sub(o, self)
    def __mul__(self, o): return _fn().mul(self, o)
    def __rmul__(self, o): return _fn().mul(o, self)
    def __truediv__(self, o): return _fn().div(self, o)
    def __rtruediv__(self, o): return _fn().div(o, self)
    def __pow__(self, o): return _fn().pow(self, o)
    def __rpow__(self, o): return _fn().pow(o, self)
    def __neg__(self): return _fn().neg(self)
    def __pos__(self): return self
    def __abs__(self): return _fn().abs(self)
    def __gt__(self, o): return _fn().gt(self, o)
    def __ge__(self, o): return _fn().ge(self, o)
    def __lt__(self, o): return _fn().lt(self, o)
    def __le__(self, o): return _fn().le(self, o)
    def __matmul__(self, o): return _fn().matmul(self, o)
    def __rmatmul__(self, o): return _fn().matmul(o, self)
    def __getitem__(self, index): return _fn().getitem(self, index)

    # ---- methods
    def sum(self, axis=None, keepdims=False): return _fn().sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _fn().mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return _fn().max(self, axis, keepdims)
    def min(self, axis=None, keepdims=False): return _fn().min(self, axis, keepdims)
    def reshape(self, *shape): return _fn().reshape(self, *shape)
    def transpose(self, *perm): return _fn().transpose(self, *perm)
    def flatten(self, axis=1): return _fn().flatten(self, axis)

    @property
    def T(self):
        return _fn().transpose(self)


def _fn():
    from . import functions
    return functions
