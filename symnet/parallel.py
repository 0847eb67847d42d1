"""The MPI world symnet runs in: which process of how many (Caffe's solver_rank and
solver_count).

symnet never imports mpi4py on its own: :func:`world` does so only when the process was
launched as one of several by an MPI launcher or Slurm, as its environment says
(``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE``, ``PMIX_SIZE``, ``MV2_COMM_WORLD_SIZE``,
``SLURM_STEP_NUM_TASKS`` greater than 1), or when ``SYMNET_MPI=1`` asks for it;
``SYMNET_MPI=0`` keeps one process even under a launcher. Otherwise the world is one
process (rank 0 of 1) and everything runs as without MPI.

Data sources shard by it: rank ``r`` of ``N`` reads records ``r, r + N, ...``
(``world().rank``, ``world().size``). The solver's use of it (gradient Allreduce,
broadcast of the initial weights, agreement on signals and errors) is in
:mod:`symnet.solver.parallel`.
"""
from __future__ import annotations

import os

from .errors import SymnetError

SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE",
                  "SLURM_STEP_NUM_TASKS")
ENV_SWITCH = "SYMNET_MPI"


class ParallelError(SymnetError, RuntimeError):
    """Training stopped on every rank because of an error on one of them (the message
    names the rank and the cause)."""


class World:
    """``rank``, ``size`` and the mpi4py communicator (None for one process)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else int(comm.Get_rank())
        self.size = 1 if comm is None else int(comm.Get_size())

    @property
    def active(self) -> bool:
        """Several processes train together."""
        return self.size > 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size})"


def launched_under_mpi(environ=None) -> bool:
    """Whether the environment says this process is one of several MPI processes (or
    ``SYMNET_MPI`` asks for MPI); reads only the environment."""
    env = os.environ if environ is None else environ
    switch = env.get(ENV_SWITCH, "").strip().lower()
    if switch in ("0", "no", "off", "false"):
        return False
    if switch in ("1", "yes", "on", "true"):
        return True
    for name in SIZE_VARIABLES:
        try:
            if int(env.get(name, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


_world = None


def world() -> World:
    """The world of this process, found on first use (mpi4py is imported only when
    :func:`launched_under_mpi`)."""
    global _world
    if _world is None:
        if not launched_under_mpi():
            _world = World()
        else:
            try:
                from mpi4py import MPI
            except ImportError as e:
                raise ParallelError(
                    "this process was launched by an MPI launcher (or SYMNET_MPI=1) but "
                    f"mpi4py cannot be imported ({e}): pip install 'symnet[mpi]', or set "
                    "SYMNET_MPI=0 to train in one process") from None
            _world = World(MPI.COMM_WORLD)
    return _world
