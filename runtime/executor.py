"""Runs a Plan: buffers allocated once and kept between calls, steps in order.

The backends share this executor and the launch code (argument packing, grid and
block from the Plan); they differ only in how memory is allocated and copied and how
a prepared launch is issued. Steps are kernel launches (GEMMs included: a BLAS-calling
kernel on the CPU, a tiled kernel on CUDA) and host callbacks.
"""
from __future__ import annotations

import time

import numpy as np



def make_backend(name, plan):
    if name == "cpu":
        from .cpu import CpuBackend
        return CpuBackend(plan)
    if name == "cuda-emu":
        from .cuda_emu import CudaEmuBackend
        return CudaEmuBackend(plan)
    if name == "cuda":
        from .cuda import CudaBackend
        return CudaBackend(plan)
    raise ValueError(f"unknown backend {name!r}; expected 'cpu', 'cuda-emu' or 'cuda'")


class Executor:
    def __init__(self, plan, backend=None, callbacks=None):
        self.plan = plan
        self.callbacks = dict(callbacks or {})   # host step name -> callable(arrays)
        self.backend = backend or make_backend(plan.backend, plan)
        self.buffers = [None] * len(plan.buffers)
        for b in plan.buffers:
            if b.role == "temp":
                self.buffers[b.id] = self.backend.alloc(b.size)
        for bid, array in plan.constants.items():
            self.buffers[bid] = self.backend.upload(np.ascontiguousarray(array).ravel())
        self.step_times = np.zeros(len(plan.steps))
        self.timed_calls = 0

    def run(self, inputs, params, out=None, timed=False):
        """inputs / params: float32 arrays in the Plan's order. Returns the outputs."""
        plan, be = self.plan, self.backend
        for bid, array in zip(plan.inputs, inputs):
            self.buffers[bid] = be.bind(bid, array)
        for (_, bid), array in zip(plan.params, params):
            self.buffers[bid] = be.bind(bid, array)
        dests = []
        for k, (bid, shape) in enumerate(plan.outputs):
            dst = out[k] if out is not None else np.empty(shape, dtype=np.float32)
            dests.append(dst)
            if plan.buffers[bid].role == "output" and all(
                    plan.outputs[j][0] != bid for j in range(k)):
                self.buffers[bid] = be.bind_output(bid, dst)
        ptrs = be.pointers(self.buffers)
        for i, step in enumerate(plan.steps):
            t0 = time.perf_counter() if timed else 0.0
            if step.kind == "kernel":
                be.launch(step, pack_args(step.args, ptrs))
            elif step.kind == "host":
                self._host(step)
            else:
                raise ValueError(f"plan step {step.name!r}: unknown kind {step.kind!r}")
            if timed:
                be.synchronize()
                self.step_times[i] += time.perf_counter() - t0
        if timed:
            self.timed_calls += 1
        for k, (bid, _) in enumerate(plan.outputs):
            be.download(self.buffers[bid], dests[k])
        return dests


    def _host(self, step):
        """A host callback (a Caffe Python layer): its buffers as host arrays, synced
        from and back to the device around the call by backends with device memory."""
        be = self.backend
        views = [be.host_view(self.buffers[a[1]], a[2], size)
                 for a, size in zip(step.args, step.attrs["sizes"])]
        self.callbacks[step.name](views)
        for a, view, mode in zip(step.args, views, step.attrs["modes"]):
            if mode == "w":
                be.host_writeback(self.buffers[a[1]], a[2], view)


def pack_args(args, ptrs):
    """(type letter, value) per kernel argument: the same packing for every backend."""
    packed = []
    for a in args:
        kind = a[0]
        if kind == "buf":
            packed.append(("p", ptrs[a[1]] + 4 * a[2]))
        elif kind == "long":
            packed.append(("l", int(a[1])))
        elif kind == "float":
            packed.append(("f", float(a[1])))
        elif kind == "null":
            packed.append(("p", 0))
        else:
            raise ValueError(f"unknown kernel argument {a!r}")
    return packed
