"""The Plan: what codegen hands the runtime.

Buffers (flat float32, with sizes; temporaries already share slots where their
lifetimes do not overlap), the ordered steps (kernel launches with grid and block,
host callbacks), the kernel table and the module sources. A Plan is
plain data and serialises to JSON; the runtime needs nothing else to run it.

Param-derived steps (``Plan.derived``, found by ``param_derived``): steps whose every
input is a param, a constant or a value computed by such steps, transitively (a
BatchNorm folded into a convolution's weights, Winograd's transformed weights). Their
values get buffers of their own (never shared with other temporaries), so they survive
between calls, and the executor runs each group of them only when a param it reads
has changed (``SyncedMemory.version``) since the group last ran.
"""
from __future__ import annotations

import base64
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Buffer:
    id: int
    size: int                 # in float32 elements
    role: str                 # "input", "param", "constant", "output", "temp"
    name: str = ""


@dataclass
class Step:
    kind: str                 # "kernel", "host"
    name: str                 # kernel name or host callback
    args: list                # ["buf", buffer, offset] | ["long", v] | ["float", v] | ["null"]
    grid: int = 1
    block: int = 1
    ops: list = field(default_factory=list)        # the graph ops it computes
    bytes_read: int = 0
    bytes_written: int = 0
    boundary: str = ""        # why fusion stopped at this step's outputs
    attrs: dict = field(default_factory=dict)      # layers, flops, host-call modes


@dataclass
class KernelInfo:
    name: str
    arg_types: str            # one letter per argument: p pointer, l long, f float
    block: int


@dataclass
class Plan:
    backend: str
    buffers: list
    steps: list
    kernels: dict             # name -> KernelInfo
    inputs: list              # buffer ids, one per function input
    params: list              # [node key, buffer id] for each param read
    outputs: list             # [buffer id, shape] per function output
    constants: dict           # buffer id -> np.ndarray
    sources: dict             # backend -> module source text
    callbacks: dict = field(default_factory=dict, repr=False, compare=False)
    # host step name -> callable; not serialised (Python layers live in the process)
    derived: list = field(default_factory=list)
    # [[step indices], [positions in params]] per group of param-derived steps: the group
    # runs, before the other steps, when one of those params changed (no params: once)

    def to_json(self) -> str:
        d = {
            "backend": self.backend,
            "buffers": [asdict(b) for b in self.buffers],
            "steps": [asdict(s) for s in self.steps],
            "kernels": {k: asdict(v) for k, v in self.kernels.items()},
            "inputs": self.inputs, "params": self.params,
            "outputs": [[b, list(s)] for b, s in self.outputs],
            "constants": {str(k): {"shape": list(v.shape),
                                   "data": base64.b64encode(v.astype("<f4").tobytes()).decode()}
                          for k, v in self.constants.items()},
            "sources": self.sources,
            "derived": self.derived,
        }
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        d = json.loads(text)
        consts = {int(k): np.frombuffer(base64.b64decode(v["data"]), dtype="<f4")
                  .reshape(v["shape"]).astype(np.float32) for k, v in d["constants"].items()}
        return cls(d["backend"], [Buffer(**b) for b in d["buffers"]],
                   [Step(**s) for s in d["steps"]],
                   {k: KernelInfo(**v) for k, v in d["kernels"].items()},
                   d["inputs"], d["params"], [(b, tuple(s)) for b, s in d["outputs"]],
                   consts, d["sources"], derived=d.get("derived", []))


def param_derived(rw, kinds, roles, param_pos, outputs):
    """The param-derived steps of a list of steps, grouped.

    ``rw[i]``: step i's (value, "r" | "w") pairs; ``kinds[i]`` its kind; ``roles[v]``
    value v's role ("param", "constant", "temp", ...); ``param_pos[v]``: a param
    value's position in the plan's params; ``outputs``: values returned to the caller.

    A step is param-derived when it is a kernel or GEMM, reads at least one value,
    reads only params, constants and values that only param-derived steps write, and
    writes only temporaries that are not results. Returns ``(groups, persistent)``:
    groups ``[[steps], [param positions]]`` (steps connected through the values they
    share form one group, so a group re-runs whole), and the values they write, which
    must keep buffers of their own."""
    writers = defaultdict(set)
    for i, pairs in enumerate(rw):
        for v, mode in pairs:
            if mode == "w":
                writers[v].add(i)
    cand = set()
    for i, pairs in enumerate(rw):
        if kinds[i] not in ("kernel", "gemm") or not any(m == "r" for _, m in pairs):
            continue
        if all(roles[v] in ("param", "constant", "temp") if m == "r" else
               roles[v] == "temp" and v not in outputs for v, m in pairs):
            cand.add(i)
    changed = True
    while changed:
        changed = False
        for i in sorted(cand):
            ok = all(roles[v] != "temp" or (writers[v] and writers[v] <= cand)
                     for v, _ in rw[i])
            if not ok:
                cand.discard(i)
                changed = True
    parent = {i: i for i in cand}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_step = {}
    for i in sorted(cand):
        for v, _ in rw[i]:
            if roles[v] == "temp":
                j = first_step.setdefault(v, i)
                parent[find(i)] = find(j)
    groups = {}
    for i in sorted(cand):
        steps, params = groups.setdefault(find(i), ([], set()))
        steps.append(i)
        params.update(param_pos[v] for v, m in rw[i] if m == "r" and roles[v] == "param")
    persistent = {v for i in cand for v, m in rw[i] if m == "w"}
    return [[steps, sorted(params)] for steps, params in groups.values()], persistent
