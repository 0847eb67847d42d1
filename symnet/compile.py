"""Glue between the front end, codegen and the runtime for one compiled function."""
from __future__ import annotations

from .codegen import lower
from .errors import ShapeError
from .codegen.report import report_rows, report_table
from .runtime.executor import Executor


class CompiledFunction:
    """A Plan for one backend and the executor that runs it."""

    def __init__(self, graph, input_ids, output_ids, backend, name):
        self.graph = graph
        self.plan = lower.lower(graph, input_ids, output_ids, backend)
        self.sources = dict(self.plan.sources)
        self.executor = Executor(self.plan, callbacks=self.plan.callbacks)
        self.param_ops = [graph.op(n) for n, _ in self.plan.params]

    def run(self, feeds, out=None, timed=False):
        params = [op.get_memory() for op in self.param_ops]
        for op, mem in zip(self.param_ops, params):
            if mem.shape != op.shape:       # e.g. a param blob reshaped since the build
                raise ShapeError(f"param '{op.name}' now has shape {mem.shape}; the "
                                 f"function was compiled for {op.shape} (rebuild it, or "
                                 "net.reshape())")
        return self.executor.run(feeds, params, out, timed)

    def report(self, device=None):
        return report_rows(self.plan, device) if device else report_rows(self.plan)

    def report_text(self, device=None):
        return report_table(self.plan, device) if device else report_table(self.plan)


def compile_function(graph, input_ids, output_ids, backend, name):
    return CompiledFunction(graph, input_ids, output_ids, backend, name)
