"""The cpu backend: the C module built with the system compiler (-O3, OpenMP, the C
library's vector math, OpenBLAS for GEMMs) and called through ctypes; buffers are
NumPy arrays.

Threads. Kernels run on one OpenMP team (OpenBLAS is single-threaded, see blas.py) of
``configured_threads()`` threads: ``SYMNET_NUM_THREADS`` if set, else the first value of
``OMP_NUM_THREADS``, else the cores this process may run on. Every kernel is a parallel
region ending in a barrier, so a step needs every thread of the team scheduled about
once per kernel: when the cores are oversubscribed (other busy processes), a thread
waits a time slice for its descheduled partner at each of them and a step takes many
times its quiet time. ``ThreadGovernor`` watches for that and runs the kernels on one
thread while it lasts (see its docstring); ``SYMNET_ADAPTIVE_THREADS=0`` turns it off.

Runs. Each module has ``sn_run_steps`` (``runner_source``): the plan's kernel steps in
order with their arguments from one packed array, so the executor makes one ctypes call
per run of consecutive kernel steps instead of one per kernel. Steps of little work, or
every step of a plan of little work, run on the calling thread alone (``serial_steps``:
``SYMNET_SERIAL_WORK``, ``SYMNET_SERIAL_PLAN_WORK``), the team restored after them.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
import time

from . import blas, cache
from .memory import get_device

CC = os.environ.get("CC", "gcc")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11",
         "-fno-math-errno", "-w"]


@functools.lru_cache(maxsize=None)
def compile_flags() -> list:
    """FLAGS, plus 512-bit vectors where the CPU has AVX-512: libmvec's 16-lane
    variants are what makes transcendental-heavy kernels memory-bound here."""
    flags = list(FLAGS)
    if " avx512f" in cache.cpu_identity():
        flags.append("-mprefer-vector-width=512")
    return flags

# float functions that glibc's libmvec provides in vector form
_VECTOR_MATH = ["expf", "logf", "sinf", "cosf", "tanf", "tanhf", "sinhf", "coshf", "atanf",
                "asinf", "acosf", "erff", "erfcf", "log1pf", "expm1f", "cbrtf", "exp2f",
                "log2f", "log10f"]
_VECTOR_MATH2 = ["powf", "atan2f"]


@functools.lru_cache(maxsize=None)
def vector_math_header() -> str:
    """Declarations that let gcc vectorise libm calls with libmvec's variants, for the
    functions this machine's libmvec has (IEEE semantics kept: no -ffast-math)."""
    try:
        mvec = ctypes.CDLL("libmvec.so.1")
    except OSError:
        return ""
    lines = []
    for names, proto in ((_VECTOR_MATH, "float {0}(float);"),
                         (_VECTOR_MATH2, "float {0}(float, float);")):
        for name in names:
            arity = "v" if proto.count("float") == 2 else "vv"
            if all(hasattr(mvec, f"_ZGV{isa}N{w}{arity}_{name}")
                   for isa, w in (("b", 4), ("c", 8), ("d", 8), ("e", 16))):
                lines.append('__attribute__((simd("notinbranch"))) ' + proto.format(name))
    return "#include <math.h>\n" + "\n".join(lines) + "\n"


_CTYPES = {"p": ctypes.c_void_p, "l": ctypes.c_long, "f": ctypes.c_float}


class _Arg(ctypes.Union):
    """One kernel argument of a packed run (``sn_arg_`` in the module's runner)."""
    _fields_ = [("p", ctypes.c_void_p), ("l", ctypes.c_long), ("f", ctypes.c_float)]


# When kernels run on one thread instead of the team. Work is a step's bytes moved
# plus flops, as the plan records them. Measured on 2 cores (min and median of
# interleaved whole-plan runs, MTCNN's PNet at 12 x 12, LeNet, ONet): a plan of less
# than SERIAL_PLAN_WORK in all (PNet at batch 1) runs fastest on the calling thread
# alone, 11 us instead of 29 us, as every parallel region's wake-up and barrier costs
# more than a second thread saves there; in larger plans even steps of 16k (a pooling)
# gain from two threads, and only steps below SERIAL_WORK (a softmax over a few values)
# are run alone.
SERIAL_WORK = 1 << 12
SERIAL_PLAN_WORK = 1 << 19


def _work_setting(name, default):
    env = os.environ.get(name, "").strip()
    if not env:
        return default
    if not env.isdigit():
        raise ValueError(f"{name}={env!r}: expected a non-negative integer (work in "
                         "bytes plus flops)")
    return int(env)


def serial_work() -> tuple:
    """(step, plan) thresholds: a kernel step whose work is below the first, or any
    kernel step of a plan whose kernels' work adds up to less than the second, runs on
    one thread. ``SYMNET_SERIAL_WORK`` and ``SYMNET_SERIAL_PLAN_WORK`` set them (0: never)."""
    return (_work_setting("SYMNET_SERIAL_WORK", SERIAL_WORK),
            _work_setting("SYMNET_SERIAL_PLAN_WORK", SERIAL_PLAN_WORK))


def serial_steps(plan, limits=None) -> list:
    """Per plan step, whether it runs on one thread (see serial_work)."""
    step_limit, plan_limit = serial_work() if limits is None else limits
    kernels = [s for s in plan.steps if s.kind == "kernel"]
    whole = sum(step_work(s) for s in kernels) < plan_limit
    return [s.kind == "kernel" and (whole or step_work(s) < step_limit) for s in plan.steps]


def step_work(step) -> int:
    """A kernel step's work: the bytes it reads and writes plus its flops."""
    return int(step.bytes_read) + int(step.bytes_written) + int(step.attrs.get("flops", 0))


def runner_source(plan) -> str:
    """C text of ``sn_run_steps(args, serial, from, to)``: the plan's kernel steps
    from..to-1 (plan step indices; host steps are skipped) called in order with their
    arguments from one packed array (each step's at a fixed offset), so a run is one
    call from Python instead of one per kernel. A step whose ``serial`` flag is set runs
    with a team of one thread (the calling thread's settings restored after it)."""
    out = ["typedef union { void* p; long l; float f; } sn_arg_;",
           "void sn_run_steps(const sn_arg_* a, const unsigned char* serial, int from, "
           "int to) {",
           "  int team = omp_get_max_threads(), dyn = -1;",
           "  for (int s = from; s < to; ++s) {",
           "    if (team > 1 && serial[s] != (dyn >= 0)) {",
           "      if (dyn < 0) { dyn = omp_get_dynamic(); omp_set_num_threads(1); "
           "omp_set_dynamic(1); }",
           "      else { omp_set_num_threads(team); omp_set_dynamic(dyn); dyn = -1; }",
           "    }",
           "    switch (s) {"]
    k = 0
    for i, step in enumerate(plan.steps):
        if step.kind != "kernel":
            continue
        types = plan.kernels[step.name].arg_types
        call = ", ".join(f"a[{k + j}].{t}" for j, t in enumerate(types))
        out.append(f"    case {i}: {step.name}({call}); break;")
        k += len(types)
    out += ["    default: break;", "    }", "  }",
            "  if (dyn >= 0) { omp_set_num_threads(team); omp_set_dynamic(dyn); }", "}", ""]
    return "\n".join(out)

# Compiled into every module: the size of the team a kernel's parallel region gets when
# called from the calling thread (what the thread settings resolve to), for a region
# asking for no size (asked = 0) or for ``asked`` threads as some templates do.
_TEAM_SIZE = """#include <omp.h>
int sn_team_size(int asked) {
  int n = 0;
  if (asked > 0) {
    _Pragma("omp parallel num_threads(asked)") { _Pragma("omp single") n = omp_get_num_threads(); }
  } else {
    _Pragma("omp parallel") { _Pragma("omp single") n = omp_get_num_threads(); }
  }
  return n;
}
"""


def _positive_int(name, value):
    value = value.strip()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer (a thread count)")
    return int(value)


def available_cores() -> int:
    """The cores this process may run on (its affinity mask)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configured_threads() -> int:
    """The OpenMP team size for symnet's kernels: ``SYMNET_NUM_THREADS``, else the first
    value of ``OMP_NUM_THREADS`` (OpenMP's own setting), else the available cores."""
    env = os.environ.get("SYMNET_NUM_THREADS", "")
    if env.strip():
        return _positive_int("SYMNET_NUM_THREADS", env)
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0]
    if omp.strip():
        return _positive_int("OMP_NUM_THREADS", omp)
    return available_cores()


def _run_delay_ns():
    """Nanoseconds the calling thread has spent runnable but waiting for a core (the
    second field of /proc/thread-self/schedstat), or None where there is no such file."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


class ThreadGovernor:
    """Adapts the team size to how busy the cores are, process-wide.

    At the start of each plan run the calling thread's run-queue delay (time it was
    runnable but not running) is sampled; over a window of ``WINDOW`` seconds, a delay
    above ``HIGH`` of the wall time with the full team means the cores are
    oversubscribed, and the kernels drop to ``reduced`` threads (1 on 2 or 3 cores).
    Since the delay measured with fewer threads says nothing about how the full team
    would fare, the full team is tried again after a hold time (``HOLD`` seconds,
    doubled after every trial that finds the cores still busy, up to ``MAX_HOLD``; reset
    by a trial that finds them quiet), for one window.

    The team size is an OpenMP setting of the calling thread (``omp_set_num_threads``);
    for one thread, dynamic adjustment is turned on as well, which caps the templates
    that ask for a team of their own size (``num_threads(T)``) at the calling thread's
    setting: such templates divide their work by the team they get. A user's own
    ``OMP_DYNAMIC`` is restored with the full team."""

    WINDOW = 0.2
    HIGH = 0.2
    HOLD = 1.0
    MAX_HOLD = 16.0

    def __init__(self, full=None, enabled=None, clock=time.monotonic, delay=_run_delay_ns):
        self.full = configured_threads() if full is None else full
        if enabled is None:
            enabled = os.environ.get("SYMNET_ADAPTIVE_THREADS", "1").strip() != "0"
        self.clock, self.delay = clock, delay
        self.enabled = enabled and self.full > 1 and delay() is not None
        self.threads = self.full
        self.hold = self.HOLD
        self.until = 0.0            # while reduced: when to try the full team again
        self.trial = False          # the current window tries the full team
        self.switches = 0           # how many times the team size changed
        self._local = threading.local()
        self._omp = None

    @property
    def reduced(self) -> int:
        return max(1, min(self.full - 1, self.full // 2 if self.full > 3 else 1))

    def observe(self, frac, now):
        """One window's run-queue delay fraction at time ``now``: the decision alone."""
        if self.threads == self.full:
            if frac > self.HIGH:
                self.hold = min(self.MAX_HOLD, self.hold * 2) if self.trial else self.HOLD
                self.threads = self.reduced
                self.until = now + self.hold
                self.switches += 1
            elif self.trial:
                self.hold = self.HOLD
            self.trial = False
        elif now >= self.until:
            self.threads = self.full
            self.trial = True
            self.switches += 1

    def _sample(self):
        loc = self._local
        now = self.clock()
        t0 = getattr(loc, "t0", None)
        if t0 is None:
            loc.t0, loc.d0 = now, self.delay()
            return
        if now - t0 < self.WINDOW and not (self.threads != self.full and now >= self.until):
            return
        d = self.delay()
        if d is None:
            return
        frac = (d - loc.d0) / max(1.0, (now - t0) * 1e9)
        loc.t0, loc.d0 = now, d
        self.observe(frac, now)

    def _libgomp(self):
        if self._omp is None:
            lib = ctypes.CDLL("libgomp.so.1")
            for name in ("omp_set_num_threads", "omp_set_dynamic"):
                getattr(lib, name).argtypes = [ctypes.c_int]
            self._omp = lib
        return self._omp

    def apply(self):
        """Set the calling thread's OpenMP team size to the current decision (nothing
        when it already has it, or when neither the settings nor the decision asked for
        a change)."""
        loc = self._local
        want = self.threads
        have = getattr(loc, "applied", None)
        if have == want:
            return
        omp = self._libgomp()
        if have is None:
            loc.dynamic = omp.omp_get_dynamic()
            if want == omp.omp_get_max_threads() and not (want == 1 and self.full > 1):
                loc.applied = want
                return
        omp.omp_set_num_threads(want)
        omp.omp_set_dynamic(1 if want == 1 and self.full > 1 else loc.dynamic)
        loc.applied = want

    def enter(self):
        """Called before each plan run of the cpu backend."""
        if self.enabled:
            self._sample()
        self.apply()


_GOVERNOR = None
_GOVERNOR_LOCK = threading.Lock()


def governor() -> ThreadGovernor:
    """The process's ThreadGovernor (created at the first cpu plan, from the
    environment as it is then)."""
    global _GOVERNOR
    with _GOVERNOR_LOCK:
        if _GOVERNOR is None:
            _GOVERNOR = ThreadGovernor()
        return _GOVERNOR


class CpuBackend:
    """Kernels of the C module called through ctypes on host memory."""

    def __init__(self, plan):
        self.device = get_device("cpu")
        header = vector_math_header()
        blas_cflags, blas_libs = blas.build_flags()
        libs = blas_libs + (["-lmvec", "-lm"] if header else ["-lm"])
        self.plan = plan
        source = header + _TEAM_SIZE + plan.sources["cpu"] + "\n" + runner_source(plan)
        self.path = cache.build(source, ".c", CC, compile_flags() + blas_cflags, libs)
        self.lib = ctypes.CDLL(str(self.path))
        self.lib.sn_team_size.restype = ctypes.c_int
        self.lib.sn_team_size.argtypes = [ctypes.c_int]
        self.fns = {}
        for name, info in plan.kernels.items():
            fn = getattr(self.lib, name)
            fn.argtypes = [_CTYPES[t] for t in info.arg_types]
            fn.restype = None
            self.fns[name] = fn
        self.governor = governor()
        kernels = [s for s in plan.steps if s.kind == "kernel"]
        self._first = kernels[0] if kernels else None
        self.lib.sn_run_steps.restype = None
        self.lib.sn_run_steps.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                          ctypes.c_int]
        self.serial = (ctypes.c_ubyte * max(1, len(plan.steps)))(
            *[int(x) for x in serial_steps(plan)])
        self._offsets = []          # per step: where its arguments start in a packed run
        k = 0
        for s in plan.steps:
            self._offsets.append(k)
            if s.kind == "kernel":
                k += len(plan.kernels[s.name].arg_types)
        self._nargs = k

    def prepare(self, step, packed):
        call = functools.partial(self.fns[step.name], *[v for _, v in packed])
        if step is not self._first:
            return call
        enter = self.governor.enter

        def first(call=call, enter=enter):
            enter()
            call()
        return first

    def prepare_run(self, first, last, packed):
        """A callable running the kernel steps ``first``..``last - 1`` (consecutive
        kernel steps of the plan) in one call into the module; ``packed``: each step's
        packed arguments (executor.pack_args), in order."""
        args = (_Arg * max(1, self._nargs))()
        for i, step_args in zip(range(first, last), packed):
            k = self._offsets[i]
            for j, (t, v) in enumerate(step_args):
                setattr(args[k + j], t, v)
        call = functools.partial(self.lib.sn_run_steps, ctypes.addressof(args),
                                 ctypes.addressof(self.serial), first, last)
        call.keep = args            # the packed arguments live as long as the call
        if self._first is None or self.plan.steps[first] is not self._first:
            return call
        enter = self.governor.enter

        def run(call=call, enter=enter):
            enter()
            call()
        run.keep = args
        return run

    def team_size(self, asked=0) -> int:
        """The number of threads a kernel of this module runs on when called now from
        the calling thread (one whose parallel region asks for ``asked`` threads, if
        not 0)."""
        self.governor.apply()
        return self.lib.sn_team_size(int(asked))

    def prepare_gemm(self, step, a, b, c):
        raise ValueError(f"cpu plans call BLAS from kernels; step {step.name!r} is a "
                         "device GEMM (the plan was lowered for another backend)")

    def synchronize(self):
        pass
