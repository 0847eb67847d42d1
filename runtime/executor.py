"""Runs a Plan: buffers allocated once and kept between calls, steps in order.

The backends share this executor; they differ in their device (runtime/memory.py: host
memory for cpu, an emulated device heap for cuda-emu, the GPU for cuda) and in how a
prepared launch is issued. Steps are kernel launches, GEMM library calls (cuBLAS's
strided-batched GEMM on the CUDA backends) and host callbacks (Caffe Python layers).

Arguments and results are NumPy arrays or ``SyncedMemory`` objects. A SyncedMemory is
read and written where it lives: on a device backend it is uploaded only when its host
copy is newer, and results written into one stay on the device (its head moves there),
so Nets and solvers keep their blobs on the device between calls. NumPy arrays are
copied in before the steps and results copied out after them, through buffers the
executor keeps. Every copy between host and device is counted
(``symnet.runtime.transfer_counts()``).

Each step's launch arguments are packed once and reused until a buffer's address
changes (a blob re-allocated by a reshape). On the cpu backend a run of consecutive
kernel steps is one call into the module (its ``sn_run_steps``), not one per kernel.

Param-derived steps (``Plan.derived``: computed from params and constants only, into
buffers kept between calls) run before the others, and only when one of the params
their group reads has another ``SyncedMemory.version`` than at the group's last run; a
param given as a NumPy array always runs them. ``derived_runs`` counts the groups run.

Every argument and destination is checked before any step runs: the count of each
kind, the number of values of each buffer, and for a NumPy destination its dtype,
layout and writability; for a SyncedMemory the host array it wraps. A mismatch is a
ShapeError naming the buffer, so no argument can make a kernel read or write outside
the memory it was given.
"""
from __future__ import annotations

import ctypes
import functools
import math
import operator
import time

import numpy as np

from .errors import ShapeError
from .memory import SyncedMemory

_is = operator.is_
_host_of = operator.attrgetter("_host")
_device_of = operator.attrgetter("_device")


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
        self.device = self.backend.device
        self.on_host = self.device.is_host
        self._owned = {}           # buffer id -> memory the executor owns (temps, constants)
        for b in plan.buffers:
            if b.role == "temp":
                self._owned[b.id] = self._alloc(b.size)
        for bid, array in plan.constants.items():
            mem = SyncedMemory.wrap(np.array(array, dtype=np.float32).reshape(-1))
            if not self.on_host:
                mem.device_read(self.device)
            self._owned[bid] = mem
        self._staging = {}         # buffer id -> memory holding a NumPy argument or result
        # whether kernels write output k straight into its destination: the first output
        # of each buffer of its own; the others (an input or param returned, a result
        # returned twice) are copied out after the steps
        seen = set()
        self._in_place = []
        for bid, _ in plan.outputs:
            self._in_place.append(plan.buffers[bid].role == "output" and bid not in seen)
            seen.add(bid)
        self._in_specs = [self._arg_spec(bid, "input") for bid in plan.inputs]
        self._param_specs = [self._arg_spec(bid, "param") for _, bid in plan.params]
        self._out_specs = [self._arg_spec(bid, "output", math.prod(shape))
                           for bid, shape in plan.outputs]
        self._ptrs = None
        self._runs = None          # what a run issues (see _prepare_runs)
        self._launches = None      # one per step, for timed runs
        self._fast = None          # the memories of the previous run (_fast_state)
        # whether a run must copy results out (an output not written in place)
        self._collect_fast = not all(self._in_place)
        self.step_times = np.zeros(len(plan.steps))
        self.timed_calls = 0
        self._init_derived()

    def _alloc(self, size):
        mem = SyncedMemory((int(size),))
        if not self.on_host:
            mem.device_overwrite(self.device)      # device memory only; never copied
        return mem

    # ------------------------------------------------------------------ binding
    def _stage(self, bid, size):
        mem = self._staging.get(bid)
        if mem is None or mem.size != size:
            mem = self._staging[bid] = self._alloc(size)
        return mem

    def _bind_in(self, bid, value, keep):
        """The address of argument ``value`` for buffer ``bid``, its values current."""
        if isinstance(value, SyncedMemory) and value.size:
            if self.on_host:
                return value.host_address()
            return value.device_read(self.device)
        if isinstance(value, SyncedMemory):
            value = value.host_read()
        arr = np.ascontiguousarray(value, dtype=np.float32)
        if arr.size == 0:               # an empty tensor's buffer holds one value
            arr = np.zeros(1, np.float32)
        if self.on_host:
            keep.append(arr)
            return arr.ctypes.data
        mem = self._stage(bid, arr.size)
        ptr = mem.device_ptr(self.device)
        self.device.htod(ptr, arr.reshape(-1))
        return ptr

    def _bind_out(self, bid, dst, keep):
        """The address kernels write result buffer ``bid`` to: the destination itself
        where it can be written in place, else a staging buffer copied out after."""
        if dst.size == 0:               # an empty result: its one-value buffer is ours
            return self._ptr_of_owned(self._stage(bid, 1))
        if isinstance(dst, SyncedMemory):
            if self.on_host:
                return dst.host_address(write=True)
            return dst.device_overwrite(self.device)
        if self.on_host:
            return dst.ctypes.data
        return self._stage(bid, dst.size).device_ptr(self.device)

    def _ptr_of_owned(self, mem):
        if self.on_host:
            return mem.host_address()
        return mem.device_ptr(self.device)

    # ------------------------------------------------------------------ running
    def run(self, inputs, params, out=None, timed=False, checked=False):
        """inputs / params: arrays or SyncedMemory in the Plan's order; ``out`` the
        destinations of the outputs (arrays or SyncedMemory). Returns the outputs.
        ``checked``: the caller checked the shapes of the inputs and destinations (a
        Function does; the sizes are checked here), which ``run_same`` relies on."""
        fast = self._fast
        if fast is not None and not timed and out is not None and \
                self._same_memories(fast, [*inputs, *params, *out]):
            if checked and not fast[4]:
                self._fast = fast[:4] + (True,)
            self._run_fast(params, out)
            return list(out)
        plan = self.plan
        self._fast = None
        self._check_args(inputs, params, out)
        versions = self._param_versions(params)
        keep = []
        ptrs = [0] * len(plan.buffers)
        for bid, mem in self._owned.items():
            ptrs[bid] = self._ptr_of_owned(mem)
        for bid, value in zip(plan.inputs, inputs):
            ptrs[bid] = self._bind_in(bid, value, keep)
        for (_, bid), value in zip(plan.params, params):
            ptrs[bid] = self._bind_in(bid, value, keep)
        dests = []
        for k, ((bid, shape), in_place) in enumerate(zip(plan.outputs, self._in_place)):
            dst = out[k] if out is not None else np.empty(shape, dtype=np.float32)
            dests.append(dst)
            if in_place:
                ptrs[bid] = self._bind_out(bid, dst, keep)
        if ptrs != self._ptrs:
            self._runs = self._prepare_runs(ptrs)
            self._launches = None           # per-step launches, made when timed
            self._ptrs = ptrs
            # the param-derived steps, each alone (they run only when a param changed)
            self._derived_launches = {i: self._prepare_one(i, ptrs)
                                      for steps, _ in self._derived for i in steps}
            self._derived_seen = [None] * len(self._derived_seen)
        self._run_derived(versions, timed)
        self._issue(timed)
        self._collect(dests, ptrs)
        self._fast = self._fast_state(inputs, params, out, checked)
        return dests

    def run_same(self, inputs, params, out):
        """Run with the memories of the previous run when that run's caller had checked
        them (``run(..., checked=True)``) and ``_fast_state`` allows: True; else
        nothing is run and False is returned."""
        fast = self._fast
        if fast is None or not fast[4] or \
                not self._same_memories(fast, [*inputs, *params, *out]):
            return False
        self._run_fast(params, out)
        return True

    def _run_fast(self, params, out):
        if self._derived:
            self._run_derived(self._param_versions(params), False)
        for launch in self._runs:
            launch()
        if self._collect_fast:
            self._collect(out, self._ptrs)

    # Host memories bound as they were in the previous run: the same SyncedMemory
    # objects around the same host arrays, none ever bound to a device. Their addresses,
    # sizes and layouts are then those already checked and packed, and nothing needs
    # syncing, so such a run issues the prepared steps directly.
    def _fast_state(self, inputs, params, out, checked=False):
        if not self.on_host or out is None:
            return None
        values = [*inputs, *params, *out]
        for v in values:
            if not isinstance(v, SyncedMemory) or not v.size:
                return None
        roots = list({id(r): r for r in (v._root() for v in values)}.values())
        if any(r._device is not None for r in roots):
            return None
        return values, [v._host for v in values], roots, [None] * len(roots), bool(checked)

    @staticmethod
    def _same_memories(state, given):
        """``given``: the inputs, params and destinations of a run, in that order."""
        values, hosts, roots, unbound = state[:4]
        # C-level loops: the same objects (checked first, so every value is a
        # SyncedMemory before its attributes are read), around the same host arrays,
        # none bound to a device since
        return len(given) == len(values) and all(map(_is, values, given)) and \
            all(map(_is, hosts, map(_host_of, given))) and \
            list(map(_device_of, roots)) == unbound

    def _issue(self, timed):
        """Issue every step but the param-derived ones (with the launches prepared for
        the bound addresses)."""
        if timed:
            be = self.backend
            plan = self.plan
            if self._launches is None:
                self._launches = [self._prepare_one(i, self._ptrs)
                                  for i in range(len(plan.steps))]
            for i in self._regular_steps:
                t0 = time.perf_counter()
                self._launches[i]()
                be.synchronize()
                self.step_times[i] += time.perf_counter() - t0
            self.timed_calls += 1
        else:
            for launch in self._runs:
                launch()

    # ------------------------------------------------------------------ param-derived
    def _init_derived(self):
        groups = getattr(self.plan, "derived", None) or []
        self._derived = [(list(steps), list(params)) for steps, params in groups]
        skip = {i for steps, _ in self._derived for i in steps}
        self._regular_steps = [i for i in range(len(self.plan.steps)) if i not in skip]
        self._derived_seen = [None] * len(self._derived)
        self._derived_params = sorted({k for _, params in self._derived for k in params})
        self.derived_runs = 0

    def _param_versions(self, params):
        """Each param's version (None for a NumPy array: always current), taken before
        anything is bound, so a call writing a param's memory runs its group again at
        the next call."""
        if not self._derived:
            return None
        versions = [None] * len(params)
        for k in self._derived_params:      # only the params the groups read
            p = params[k]
            if isinstance(p, SyncedMemory):
                versions[k] = p.version
        return versions

    def _run_derived(self, versions, timed):
        """The groups of param-derived steps whose params changed since they ran."""
        for g, (steps, params) in enumerate(self._derived):
            key = tuple(versions[k] for k in params)
            if key == self._derived_seen[g] and None not in key:
                continue
            self._derived_seen[g] = None     # a failure below leaves the group stale
            for i in steps:
                if timed:
                    t0 = time.perf_counter()
                    self._derived_launches[i]()
                    self.backend.synchronize()
                    self.step_times[i] += time.perf_counter() - t0
                else:
                    self._derived_launches[i]()
            self._derived_seen[g] = key
            self.derived_runs += 1

    def _check_args(self, inputs, params, out):
        """Counts and sizes of every argument, before any step runs."""
        plan = self.plan
        for what, given, want in (("inputs", inputs, len(plan.inputs)),
                                  ("params", params, len(plan.params)),
                                  ("outputs", out, len(plan.outputs))):
            if given is not None and len(given) != want:
                raise ShapeError(f"compiled function: {len(given)} {what} given, "
                                 f"expected {want}")
        check = self._check_value
        for spec, value in zip(self._in_specs, inputs):
            check(spec, value)
        for spec, value in zip(self._param_specs, params):
            check(spec, value)
        if out is not None:
            for spec, value in zip(self._out_specs, out):
                check(spec, value)

    def _arg_spec(self, bid, role, size=None):
        """(buffer, role, values expected, whether it is written). ``size``: the values of
        an output; an input's are its buffer's, and buffers of empty tensors hold one
        value, so an empty argument is taken for them (bound to a zeroed value)."""
        return (bid, role, self.plan.buffers[bid].size if size is None else size,
                role == "output")

    def _check_value(self, spec, value):
        bid, role, want, writes = spec
        if isinstance(value, SyncedMemory):
            arr = value.host_array
        elif writes:
            arr = value
            if not isinstance(arr, np.ndarray):
                raise ShapeError(f"{self._arg_name(spec)}: the destination is a "
                                 f"{type(arr).__name__}, expected a NumPy array or a "
                                 "SyncedMemory")
        else:
            arr = None
        given = np.size(value) if arr is None else arr.size
        if given != want and not (given == 0 and want == 1 and not writes):
            raise ShapeError(f"{self._arg_name(spec)}: {given} values given, expected {want}")
        if arr is None:
            return                      # converted to contiguous float32 when bound
        flags = arr.flags
        if arr.dtype != np.float32 or not flags.c_contiguous:
            raise ShapeError(f"{self._arg_name(spec)}: the memory is {arr.dtype}"
                             f"{'' if flags.c_contiguous else ', not contiguous'}; "
                             "expected C-contiguous float32")
        if writes and not flags.writeable:
            raise ShapeError(f"{self._arg_name(spec)}: the destination is read-only")

    def _arg_name(self, spec):
        bid, role = spec[:2]
        return f"{role} '{self.plan.buffers[bid].name or bid}'"

    def _prepare_runs(self, ptrs):
        """Callables issuing every step in order: on a backend that runs a range of
        kernel steps in one call (``prepare_run``: cpu), one per run of consecutive
        kernel steps; otherwise one per step."""
        steps = self.plan.steps
        regular = set(self._regular_steps)
        run = getattr(self.backend, "prepare_run", None)
        if run is None:
            return [self._prepare(steps[i], ptrs) for i in self._regular_steps]
        out, i = [], 0
        while i < len(steps):
            if i not in regular:            # a param-derived step: issued on its own
                i += 1
                continue
            j = i
            while j < len(steps) and steps[j].kind == "kernel" and j in regular:
                j += 1
            if j > i:
                out.append(run(i, j, [pack_args(s.args, ptrs) for s in steps[i:j]]))
                i = j
            else:
                out.append(self._prepare(steps[i], ptrs))
                i += 1
        return out

    def _prepare_one(self, i, ptrs):
        """A callable issuing step i alone (timed runs)."""
        step = self.plan.steps[i]
        run = getattr(self.backend, "prepare_run", None)
        if run is not None and step.kind == "kernel":
            return run(i, i + 1, [pack_args(step.args, ptrs)])
        return self._prepare(step, ptrs)

    def _prepare(self, step, ptrs):
        """A callable issuing the step."""
        if step.kind == "kernel":
            return self.backend.prepare(step, pack_args(step.args, ptrs))
        if step.kind == "gemm":
            a, b, c = (ptrs[arg[1]] + 4 * arg[2] for arg in step.args)
            return self.backend.prepare_gemm(step, a, b, c)
        if step.kind == "host":
            return functools.partial(self._host, step, ptrs)
        raise ValueError(f"plan step {step.name!r}: unknown kind {step.kind!r}")

    def _collect(self, dests, ptrs):
        """Results that kernels did not write in place: copied out of their buffers."""
        plan, dev = self.plan, self.device
        for (bid, _), dst, in_place in zip(plan.outputs, dests, self._in_place):
            if in_place and (self.on_host or isinstance(dst, SyncedMemory)):
                continue
            src = ptrs[bid]
            if isinstance(dst, SyncedMemory):
                if self.on_host:
                    dst.host_write().reshape(-1)[...] = self._host_array(src, dst.size)
                else:
                    ptr = dst.device_overwrite(dev)
                    if ptr != src:
                        dev.dtod(ptr, src, dst.nbytes)
            elif self.on_host:
                dst.reshape(-1)[...] = self._host_array(src, dst.size)
            else:
                dev.dtoh(dst.reshape(-1), src)

    @staticmethod
    def _host_array(ptr, size):
        return np.ctypeslib.as_array((ctypes.c_float * size).from_address(ptr))

    def _host(self, step, ptrs):
        """A host callback (a Caffe Python layer): its buffers as host arrays, copied from
        and back to the device around the call by backends with device memory."""
        views = []
        for a, size, mode in zip(step.args, step.attrs["sizes"], step.attrs["modes"]):
            ptr = ptrs[a[1]] + 4 * a[2]
            if self.on_host:
                views.append(self._host_array(ptr, size))
            else:
                view = np.zeros(size, dtype=np.float32)
                if mode == "r":
                    self.device.dtoh(view, ptr)
                views.append(view)
        self.callbacks[step.name](views)
        if not self.on_host:
            for a, view, mode in zip(step.args, views, step.attrs["modes"]):
                if mode == "w":
                    self.device.htod(ptrs[a[1]] + 4 * a[2], view)


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
