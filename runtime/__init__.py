"""symnet.runtime: executes Plans on backends; never imports sympy or networkx."""
import os as _os

# Between kernels, OpenMP's idle threads spin for a while before sleeping. Kernels run
# back to back, so a spin that outlasts the gap between two of them saves a futex wake
# per kernel (a LeNet training step is about 50 kernels). GEMMs run inside the same
# OpenMP threads (runtime/blas.py), so no second pool of spinning BLAS threads competes
# with them; libgomp itself spins only briefly when a team has more threads than there
# are cores (cuda-emu's blocks). libgomp's default of 300000 would keep idle threads
# busy for longer after a pass, taking the cores from NumPy code that runs next. The
# value is read once, when the first module loads; a value set by the user wins.
# The team's size (SYMNET_NUM_THREADS, else OMP_NUM_THREADS) and its adaptation to
# busy cores are in cpu.py.
_os.environ.setdefault("GOMP_SPINCOUNT", "100000")

from .memory import SyncedMemory, reset_transfer_counts, transfer_counts  # noqa: E402

__all__ = ["SyncedMemory", "reset_transfer_counts", "transfer_counts"]
