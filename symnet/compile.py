"""Glue between the front end, codegen and the runtime for one compiled function."""
from __future__ import annotations

import operator

from .codegen import lower
from .errors import ShapeError
from .codegen.report import report_rows, report_table
from .runtime.executor import Executor
from .runtime.memory import SyncedMemory

_is = operator.is_
_host_of = operator.attrgetter("_host")


class CompiledFunction:
    """A Plan for one backend and the executor that runs it."""

    def __init__(self, graph, input_ids, output_ids, backend, name):
        self.graph = graph
        self.plan = lower.lower(graph, input_ids, output_ids, backend)
        self.sources = dict(self.plan.sources)
        self.executor = Executor(self.plan, callbacks=self.plan.callbacks)
        self.param_ops = [graph.op(n) for n, _ in self.plan.params]
        self._param_getters = [op.get_memory for op in self.param_ops]
        # every param's memory at an attribute path its class names: all fetched in one
        # C loop (BlobParam's), else each by its get_memory
        paths = {type(op).__dict__.get("memory_attr") if "get_memory" in type(op).__dict__
                 else None for op in self.param_ops}
        self._fetch_params = None
        if len(paths) == 1 and None not in paths:
            getter = operator.attrgetter(paths.pop())
            ops_ = self.param_ops
            self._fetch_params = lambda: list(map(getter, ops_))
        self._checked_params = None     # (memories, their host arrays) last checked

    def run_same(self, feeds, out):
        """``out`` when the executor ran again with the memories of its previous run,
        which this function's caller had checked (see ``run``), else None."""
        fetch = self._fetch_params
        params = fetch() if fetch is not None else [get() for get in self._param_getters]
        if self.executor.run_same(feeds, params, out):
            return list(out)
        return None

    def run(self, feeds, out=None, timed=False, checked=False):
        """``checked``: the caller checked the shapes of ``feeds`` and ``out``; the
        params are checked here."""
        params = [get() for get in self._param_getters]
        last = self._checked_params
        if last is not None and all(map(_is, last[0], params)) and \
                all(map(_is, last[1], map(_host_of, params))):
            # the memories of the previous call around the same host arrays: a shape is
            # its host array's, so they were checked
            return self.executor.run(feeds, params, out, timed, checked)
        self._checked_params = None
        for op, mem in zip(self.param_ops, params):
            if mem.shape != op.shape:       # e.g. a param blob reshaped since the build
                raise ShapeError(f"param '{op.name}' now has shape {mem.shape}; the "
                                 f"function was compiled for {op.shape} (rebuild it, or "
                                 "net.reshape())")
        if all(type(m) is SyncedMemory for m in params):
            self._checked_params = (params, [m._host for m in params])
        return self.executor.run(feeds, params, out, timed, checked)

    def report(self, device=None):
        return report_rows(self.plan, device) if device else report_rows(self.plan)

    def report_text(self, device=None):
        return report_table(self.plan, device) if device else report_table(self.plan)


def compile_function(graph, input_ids, output_ids, backend, name):
    return CompiledFunction(graph, input_ids, output_ids, backend, name)
