"""An ExternalData source of the digits (examples/mnist/make_digits_db.py's images and
split) that shards as ExternalData tells it (``rank``, ``world_size``): rank r of N takes
records r, r + N, ... of each global batch of N * batch records, so N ranks at batch B see together exactly the
records one process at batch N * B sees.

param_str: ``batch=B`` and, for tests of failures, ``fail_rank=R fail_at=K`` (rank R
raises at its K-th batch) and ``pid_dir=DIR`` (each rank writes its pid to
DIR/rank<R>.pid)."""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "..", "..", "examples", "mnist")


def _digits(phase):
    sys.path.insert(0, os.path.abspath(EXAMPLES))
    try:
        import make_digits_db as m
    finally:
        sys.path.pop(0)
    (xtr, ytr), (xte, yte) = m.split(*m.digits_28x28())
    x, y = (xtr, ytr) if phase == "TRAIN" else (xte, yte)
    return x.astype(np.float32) * np.float32(1 / 256), y.astype(np.float32)


class DigitsShard:
    def __init__(self, param_str, phase, rank=0, world_size=1, **_):
        opts = dict(kv.split("=", 1) for kv in param_str.split())
        self.batch = int(opts["batch"])
        self.fail_rank = int(opts.get("fail_rank", -1))
        self.fail_at = int(opts.get("fail_at", -1))
        # ExternalData tells a Python source its share (TEST nets: rank 0 of 1)
        self.rank, self.size = rank, world_size
        self.x, self.y = _digits(phase)
        self.pos = 0                    # first record of the next global batch
        self.count = 0
        if opts.get("pid_dir"):
            with open(os.path.join(opts["pid_dir"], f"rank{self.rank}.pid"), "w") as f:
                f.write(str(os.getpid()))

    def top_shapes(self):
        return [(self.batch, 1, 28, 28), (self.batch,)]

    def next_batch(self):
        if self.rank == self.fail_rank and self.count == self.fail_at:
            raise RuntimeError(f"digits source of rank {self.rank} failed at batch "
                               f"{self.count}")
        n = len(self.x)
        idx = (self.pos + self.rank + self.size * np.arange(self.batch)) % n
        self.pos = (self.pos + self.size * self.batch) % n
        self.count += 1
        return [self.x[idx].copy(), self.y[idx].copy()]

    def state(self):
        return {"pos": self.pos, "count": self.count}

    def set_state(self, state):
        self.pos, self.count = int(state["pos"]), int(state["count"])
