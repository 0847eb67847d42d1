"""The Plan: what codegen hands the runtime.

Buffers (flat float32, with sizes; temporaries already share slots where their
lifetimes do not overlap), the ordered steps (kernel launches with grid and block,
host callbacks), the kernel table and the module sources. A Plan is
plain data and serialises to JSON; the runtime needs nothing else to run it.
"""
from __future__ import annotations

import base64
import json
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
                   consts, d["sources"])
