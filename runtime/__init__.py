"""symnet.runtime: executes Plans on backends; never imports sympy or networkx."""
import os as _os

# Between kernels, OpenMP's idle threads spin for a while before sleeping (libgomp's
# default spin count is 300000). On 2 cores NumPy's BLAS threads then fight them and a
# GEMM between two kernels runs ten times slower; in cuda-emu, a block's 128 threads
# spinning at a barrier starve the one thread still working. A short spin keeps the
# next kernel's start fast. libgomp reads this once, when the first module loads; a
# value set by the user wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "1000")
