"""Data-parallel training under MPI, with the semantics of Caffe's multi-GPU training
(P2PSync / NCCL): every rank runs ``batch_size`` per iteration on its own shard of the
data, the parameter gradients are summed over the ranks with one in-place Allreduce
per flat gradient buffer of the solver (the groups of ``update.py``) and divided by the
number of ranks (Caffe divides by ``solver_count``), and every rank applies the same
update. All ranks start from rank 0's weights (broadcast after initialisation and
after a restore).

Only rank 0 builds test nets, tests, logs and writes snapshots; a snapshot gathers
every rank's data positions into its resume data, and a restore gives each rank its
own. Once per iteration the ranks agree, with one small Allreduce of flags, on signal
actions (SIGINT/SIGHUP act on all ranks together) and errors: an exception on one rank
stops every rank with a :class:`~symnet.parallel.ParallelError` naming the rank and
the cause. An exception where the ranks cannot agree any more ends all of them with
MPI_Abort after the message is written to stderr.

The buffers are host memory: on cuda-emu (and cuda) the flat gradients are brought to
the host for the Allreduce and back to the device for the update, copies the runtime's
transfer counters count. NCCL (device buffers, no host round trip) is for when a GPU
can be tested.
"""
from __future__ import annotations

import logging
import sys
import time

import numpy as np

from ..parallel import ParallelError
from .common import SolverAction, log


class ParallelSync:
    """The collective operations a solver needs on a world of several ranks."""

    def __init__(self, solver, world):
        from mpi4py import MPI
        self.MPI = MPI
        self.solver = solver
        self.world = world
        self.comm = world.comm
        self.rank, self.size = world.rank, world.size
        self.allreduce_seconds = 0.0     # time spent in the gradient Allreduce calls
        self.allreduce_calls = 0
        if self.rank != 0:
            logger = logging.getLogger("symnet.solver")
            if logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)

    # ------------------------------------------------------------------ agreement
    def agree(self, error=None, action=SolverAction.NONE):
        """Every rank's error and requested action, combined: raises ParallelError on
        every rank when any rank has an error; else the action (STOP when any rank asks
        to stop, SNAPSHOT when any asks for one)."""
        flags = np.array([error is not None, action == SolverAction.STOP,
                          action == SolverAction.SNAPSHOT], dtype=np.int32)
        self.comm.Allreduce(self.MPI.IN_PLACE, flags, op=self.MPI.MAX)
        if flags[0]:
            mine = None if error is None else f"{type(error).__name__}: {error}"
            failed = [(r, m) for r, m in enumerate(self.comm.allgather(mine))
                      if m is not None]
            text = "; ".join(f"rank {r} of {self.size}: {m}" for r, m in failed)
            exc = ParallelError(f"training stopped on all {self.size} ranks: {text}")
            if error is not None:
                raise exc from error
            raise exc
        if flags[1]:
            return SolverAction.STOP
        if flags[2]:
            return SolverAction.SNAPSHOT
        return SolverAction.NONE

    def abort(self, error):
        """End every rank: the ranks can no longer meet in the same collective."""
        sys.stderr.write(f"symnet: rank {self.rank} of {self.size}: "
                         f"{type(error).__name__}: {error}; aborting all ranks\n")
        sys.stderr.flush()
        self.comm.Abort(1)

    # ------------------------------------------------------------------ buffers
    def _groups(self):
        self.solver._sync_layout()
        return self.solver._layout

    def broadcast_params(self):
        """Rank 0's weights to every rank (Caffe's P2PSync sends the root's params)."""
        for g in self._groups():
            self.comm.Bcast(g["data"].host_write(), root=0)

    def allreduce_gradients(self):
        """Sum every flat gradient buffer over the ranks in place, one Allreduce per
        buffer, and divide by the number of ranks."""
        scale = np.float32(1.0 / self.size)
        for g in self._groups():
            diff = g["diff"].host_write()
            t0 = time.perf_counter()
            self.comm.Allreduce(self.MPI.IN_PLACE, diff, op=self.MPI.SUM)
            self.allreduce_seconds += time.perf_counter() - t0
            self.allreduce_calls += 1
            np.multiply(diff, scale, out=diff)

    def gather(self, obj):
        """``obj`` of every rank, on rank 0 (None elsewhere)."""
        return self.comm.gather(obj, root=0)


def make_sync(solver):
    """A ParallelSync when this process is one of several MPI ranks, else None."""
    from ..parallel import world
    w = world()
    if not w.active:
        return None
    log.info("Data-parallel training on %d ranks (MPI)", w.size)
    # the train net's data sources read this rank's share of their records (Caffe's
    # parallel data layers: rank r of N takes records r, r + N, ...; TEST nets unsharded)
    from .. import data
    data.set_world(w.rank, w.size)
    return ParallelSync(solver, w)
