"""``symnet.function``: compile a graph from inputs to outputs for a backend."""
from __future__ import annotations

import operator
import os

import numpy as np

from . import ops, reference
from .errors import GraphError, ShapeError
from .graph import Tensor
from .runtime.memory import SyncedMemory

BACKENDS = ("numpy", "cpu", "cuda-emu", "cuda")

_is = operator.is_
_host_of = operator.attrgetter("_host")


def default_backend() -> str:
    """``$SYMNET_BACKEND``, else ``cuda`` where a GPU is usable, else ``cpu``."""
    env = os.environ.get("SYMNET_BACKEND")
    if env:
        if env not in BACKENDS:
            raise ValueError(f"SYMNET_BACKEND={env!r}: expected one of {BACKENDS}")
        return env
    from .runtime import devices
    return "cuda" if devices.cuda_usable() else "cpu"


def _check_io(inputs, outputs):
    for t in list(inputs) + list(outputs):
        if not isinstance(t, Tensor):
            raise GraphError(f"function: {t!r} is not a Tensor")
    if not outputs:
        raise GraphError("function: no outputs given")
    graph = outputs[0].graph
    for t in list(inputs) + list(outputs):
        if t.graph is not graph:
            raise GraphError(f"function: {t.label()} belongs to another graph")
    for t in inputs:
        if not isinstance(t.op, ops.Input):
            raise GraphError(f"function: {t.label()} is a {t.op.kind}, not an input; "
                             "only symnet.input tensors can be fed")
    given = {t.id for t in inputs}
    for n in graph.ancestors([o.id for o in outputs]):
        op = graph.op(n)
        if isinstance(op, ops.Input) and n not in given:
            raise GraphError(f"function: the outputs depend on input '{op.name}' "
                             f"(shape {op.shape}), which is not among the inputs "
                             f"{[t.name for t in inputs]}")
    graph.verify([o.id for o in outputs])
    return graph


class Function:
    """A compiled function. Call it with one array per input; it returns one array per
    output (a single array when built with a single output Tensor)."""

    def __init__(self, inputs, outputs, backend=None, name=None):
        self.single = isinstance(outputs, Tensor)
        self.inputs = list(inputs)
        self.outputs = [outputs] if self.single else list(outputs)
        self.graph = _check_io(self.inputs, self.outputs)
        self.backend = backend or default_backend()
        if self.backend not in BACKENDS:
            raise ValueError(f"function: unknown backend {self.backend!r}, expected one of "
                             f"{BACKENDS}")
        self.name = name or "fn"
        # shapes looked up once (a Tensor's shape is a graph lookup)
        self._in_shapes = [t.shape for t in self.inputs]
        self._out_shapes = [o.shape for o in self.outputs]
        self._impl = None
        if self.backend != "numpy":
            from .compile import compile_function
            self._impl = compile_function(self.graph, [t.id for t in self.inputs],
                                          [t.id for t in self.outputs], self.backend,
                                          self.name)

    def _feeds(self, arrays):
        if len(arrays) != len(self.inputs):
            raise GraphError(f"function '{self.name}': got {len(arrays)} arrays for "
                             f"{len(self.inputs)} inputs {[t.name for t in self.inputs]}")
        feeds = []
        for t, shape, a in zip(self.inputs, self._in_shapes, arrays):
            if not isinstance(a, SyncedMemory):
                a = np.asarray(a, dtype=np.float32, order="C")
            if a.shape != shape:
                raise ShapeError(f"function '{self.name}': input '{t.name}' got shape "
                                 f"{a.shape}, expected {shape}")
            feeds.append(a)
        return feeds

    def __call__(self, *arrays, out=None, timed=False):
        """One array per input (a NumPy array, or a ``SyncedMemory`` read where it is
        current); returns the outputs as NumPy arrays, or into ``out`` (arrays, or
        ``SyncedMemory`` that compiled backends write in place on their device)."""
        if out is not None and self._impl is not None:
            # the memories of the previous call, already checked (a Net's forward)
            results = None if timed else self._impl.run_same(arrays, out)
            if results is None and self._same_memories(arrays, out):
                results = self._impl.run(list(arrays), list(out), timed=timed, checked=True)
            if results is not None:
                return results[0] if self.single else results
        self._checked = None
        feeds = self._feeds(arrays)
        if self._impl is None:
            feeds = [a.host_read() if isinstance(a, SyncedMemory) else a for a in feeds]
            results = reference.evaluate(self.graph, [o.id for o in self.outputs],
                                         {t.id: a for t, a in zip(self.inputs, feeds)})
            if out is not None:
                for dst, src in zip(self._check_out(out), results):
                    if isinstance(dst, SyncedMemory):
                        dst.host_write()[...] = src
                    else:
                        dst[...] = src
                results = list(out)
        else:
            out = self._check_out(out) if out is not None else None
            if out is not None:
                self._checked = self._memories_state(feeds, out)
            results = self._impl.run(feeds, out, timed=timed, checked=out is not None)
        return results[0] if self.single else results

    # Arguments and destinations that are the SyncedMemory objects of the previous call,
    # around the same host arrays (so of the same shapes), need no new checks.
    @staticmethod
    def _memories_state(feeds, out):
        values = [*feeds, *out]
        for v in values:
            if type(v) is not SyncedMemory:
                return None
        return values, [v._host for v in values]

    def _same_memories(self, arrays, out):
        state = self.__dict__.get("_checked")
        if state is None:
            return False
        values, hosts = state
        given = [*arrays, *out]
        # C-level loops; identity first, so only the checked memories' hosts are read
        return len(given) == len(values) and all(map(_is, values, given)) and \
            all(map(_is, hosts, map(_host_of, given)))

    def _check_out(self, out):
        out = list(out)
        if len(out) != len(self.outputs):
            raise GraphError(f"function '{self.name}': out= has {len(out)} arrays for "
                             f"{len(self.outputs)} outputs")
        if all(type(a) is SyncedMemory for a in out):
            # memories only (what Nets pass): distinct objects of the right shapes
            if len(set(map(id, out))) != len(out):
                self._check_distinct(out)
            for o, shape, a in zip(self.outputs, self._out_shapes, out):
                if a.shape != shape:
                    raise ShapeError(f"function '{self.name}': out memory for {o.label()} "
                                     f"has shape {a.shape}, expected {shape}")
            return out
        self._check_distinct(out)
        for o, shape, a in zip(self.outputs, self._out_shapes, out):
            if isinstance(a, SyncedMemory):
                if a.shape != shape:
                    raise ShapeError(f"function '{self.name}': out memory for {o.label()} "
                                     f"has shape {a.shape}, expected {shape}")
                continue
            if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == o.shape
                    and a.flags.c_contiguous):
                raise ShapeError(f"function '{self.name}': out array for {o.label()} must be "
                                 f"C-contiguous float32 of shape {o.shape}")
            if not a.flags.writeable:
                raise ShapeError(f"function '{self.name}': out array for {o.label()} is "
                                 "read-only")
        return out

    def _check_distinct(self, out):
        """No two destinations share memory (in n log n: the same object, or arrays whose
        byte ranges overlap and that share an element)."""
        seen = {}
        spans = []
        for j, a in enumerate(out):
            k = seen.setdefault(id(a), j)
            if k != j:
                self._shared_out(k, j)
            if isinstance(a, np.ndarray) and a.size:
                lo = hi = a.__array_interface__["data"][0]
                for n, s in zip(a.shape, a.strides):
                    lo, hi = lo + min(0, s * (n - 1)), hi + max(0, s * (n - 1))
                spans.append((lo, hi + a.itemsize, j))
        spans.sort()
        reach = None                     # the span reaching furthest so far
        for lo, hi, j in spans:
            if reach is not None and lo < reach[1] and \
                    np.shares_memory(out[reach[2]], out[j]):
                self._shared_out(*sorted((reach[2], j)))
            if reach is None or hi > reach[1]:
                reach = (lo, hi, j)

    def _shared_out(self, k, j):
        raise ShapeError(f"function '{self.name}': out arrays {k} and {j} share memory; "
                         "each output needs its own")

    # inspection (codegen backends fill these)
    @property
    def sources(self) -> dict:
        return {} if self._impl is None else dict(self._impl.sources)

    @property
    def plan(self):
        return None if self._impl is None else self._impl.plan

    def report(self, device=None) -> list:
        """One row per plan step: kernels, bytes moved, flops, launch shape; with
        ``device`` (e.g. "H100 SXM") a roofline time estimate per step (an estimate on
        paper, not a measurement)."""
        return [] if self._impl is None else self._impl.report(device)

    def report_text(self, device=None) -> str:
        return "" if self._impl is None else self._impl.report_text(device)


def function(inputs, outputs, backend=None, name=None) -> Function:
    """Compile ``outputs`` as a function of ``inputs`` for ``backend`` (``numpy``, ``cpu``,
    ``cuda-emu``, ``cuda``; default from ``$SYMNET_BACKEND`` or the machine)."""
    return Function(inputs, outputs, backend, name)
