"""Elementwise throughput: symnet's generated CPU kernels against NumPy, numexpr and
PyTorch (eager and compiled, each when installed), as a fraction of the streaming
triad bandwidth measured in the same run.

    python benchmarks/elementwise.py [--n 16777216] [--repeat 20]

Workloads (float32): swish forward y = x * sigmoid(x); GELU (tanh form) forward; GELU
backward dx = dy * gelu'(x), given x and dy. The same loops written by hand in C (built
with symnet's flags and vector math declarations) are the reference: the target is
symnet's kernels within 1.1x of them.
"""
from __future__ import annotations

import os

# PyTorch brings its own OpenMP runtime; two runtimes whose idle threads spin-wait
# fight over 2 cores and slow every implementation measured after the other. Idle
# threads sleep instead (set before any OpenMP runtime loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import math
import time

import numpy as np  # noqa: E402

import symnet as sn  # noqa: E402

C = math.sqrt(2.0 / math.pi)


def best_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def interleaved(fns, repeat):
    """Best time of each callable, measured round-robin so that a shared machine's
    changing memory bandwidth affects all of them alike."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def gelu(t, tanh, c=C):
    return 0.5 * t * (1.0 + tanh(c * (t + 0.044715 * t * t * t)))


def symnet_fns(n):
    x = sn.input("x", (n,))
    dy = sn.input("dy", (n,))
    y = gelu(x, sn.tanh)
    (dx,) = sn.vjp([y], [dy], [x])
    return {
        "triad": sn.function([x, dy], x + 3.0 * dy, backend="cpu"),
        "swish": sn.function([x], x * sn.sigmoid(x), backend="cpu"),
        "gelu": sn.function([x], y, backend="cpu"),
        "gelu_bwd": sn.function([x, dy], dx, backend="cpu"),
    }


HAND_C = r"""
#include <math.h>
#define GC 0.7978845608028654f
void swish(long n, const float *x, const float *dy, float *y) {
    #pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-x[i]));
}
void gelu(long n, const float *x, const float *dy, float *y) {
    #pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(GC * (v + 0.044715f * v * v * v)));
    }
}
void gelu_bwd(long n, const float *x, const float *dy, float *y) {
    #pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
        float v = x[i], t = tanhf(GC * (v + 0.044715f * v * v * v));
        float du = GC * (1.0f + 3.0f * 0.044715f * v * v);
        y[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
}
"""


def hand_c_fns(n):
    """The same three loops written by hand in C, built with the flags and vector math
    declarations symnet's CPU modules use (the reference the target is set against)."""
    import ctypes
    import subprocess
    import tempfile
    from symnet.runtime import cpu
    work = tempfile.mkdtemp(prefix="sn-bench-")
    src, lib = os.path.join(work, "hand.c"), os.path.join(work, "hand.so")
    with open(src, "w") as f:
        f.write(cpu.vector_math_header() + HAND_C)
    subprocess.run([cpu.CC, *cpu.compile_flags(), src, "-o", lib, "-lmvec", "-lm"],
                   check=True)
    so = ctypes.CDLL(lib)
    ptr = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
    fns = {}
    for work_name in ("swish", "gelu", "gelu_bwd"):
        f = getattr(so, work_name)
        f.argtypes, f.restype = [ctypes.c_long, ptr, ptr, ptr], None
        out = np.empty(n, dtype=np.float32)
        fns[work_name] = lambda x, dy, f=f, out=out: f(n, x, dy, out)
    return fns


def numpy_fns():
    def gelu_np(x):
        return np.float32(0.5) * x * (np.float32(1) + np.tanh(np.float32(C) * (
            x + np.float32(0.044715) * x * x * x)))

    def gelu_bwd_np(x, dy):
        u = np.float32(C) * (x + np.float32(0.044715) * x * x * x)
        t = np.tanh(u)
        du = np.float32(C) * (np.float32(1) + np.float32(3 * 0.044715) * x * x)
        return dy * (np.float32(0.5) * (np.float32(1) + t) +
                     np.float32(0.5) * x * (np.float32(1) - t * t) * du)
    return {"swish": lambda x, dy: x / (np.float32(1) + np.exp(-x)),
            "gelu": lambda x, dy: gelu_np(x), "gelu_bwd": gelu_bwd_np}


def numexpr_fns():
    try:
        import numexpr as ne
    except ImportError:
        return None
    c, k = np.float32(C), np.float32(0.044715)
    one, half = np.float32(1), np.float32(0.5)
    consts = {"c": c, "k": k, "one": one, "half": half, "k3": np.float32(3 * 0.044715)}

    def run(text):
        return lambda x, dy: ne.evaluate(text, local_dict=dict(consts, x=x, dy=dy))
    return {
        "swish": run("x / (one + exp(-x))"),
        "gelu": run("half * x * (one + tanh(c * (x + k * x * x * x)))"),
        "gelu_bwd": run("dy * (half * (one + tanh(c * (x + k * x * x * x))) + half * x * "
                        "(one - tanh(c * (x + k * x * x * x)) ** 2) * c * (one + k3 * x * x))"),
    }


def torch_fns(compiled):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)

    def gelu_t(x):
        return torch.nn.functional.gelu(x, approximate="tanh")

    def gelu_bwd_t(x, dy):
        return torch.ops.aten.gelu_backward(dy, x, approximate="tanh")

    fns = {"swish": lambda x, dy: torch.nn.functional.silu(x), "gelu": lambda x, dy: gelu_t(x),
           "gelu_bwd": gelu_bwd_t}
    if compiled:
        try:
            fns = {k: torch.compile(v) for k, v in fns.items()}
        except Exception:     # torch.compile needs a working C++ toolchain
            return None
    return fns


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16 * 1024 * 1024)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    n = args.n
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float32)
    dy = rng.standard_normal(n, dtype=np.float32)
    bytes_per = {"swish": 8, "gelu": 8, "gelu_bwd": 12}
    sym = symnet_fns(n)
    outs = {w: np.empty(n, dtype=np.float32) for w in ("triad", "swish", "gelu", "gelu_bwd")}
    calls = {
        ("symnet cpu", "triad"): lambda: sym["triad"](x, dy, out=[outs["triad"]]),
        ("symnet cpu", "swish"): lambda: sym["swish"](x, out=[outs["swish"]]),
        ("symnet cpu", "gelu"): lambda: sym["gelu"](x, out=[outs["gelu"]]),
        ("symnet cpu", "gelu_bwd"): lambda: sym["gelu_bwd"](x, dy, out=[outs["gelu_bwd"]]),
    }
    others = [("hand-written C", hand_c_fns(n)), ("numpy eager", numpy_fns()),
              ("numexpr", numexpr_fns()),
              ("torch eager", torch_fns(False)), ("torch compiled", torch_fns(True))]
    for label, fns in others:
        if fns is None:
            print(f"{label}: not installed, skipped")
            continue
        a, b = x, dy
        if label.startswith("torch"):
            import torch
            a, b = torch.from_numpy(x), torch.from_numpy(dy)
        for work in ("swish", "gelu", "gelu_bwd"):
            calls[(label, work)] = lambda f=fns[work], a=a, b=b: f(a, b)
    best = interleaved(calls, args.repeat)
    triad_bw = 12 * n / best[("symnet cpu", "triad")]
    print(f"n = {n:,} float32; streaming triad (symnet cpu, a = b + 3c): "
          f"{triad_bw / 1e9:.1f} GB/s")
    rows = [(label, work, t) for (label, work), t in best.items() if work != "triad"]
    print(f"{'implementation':<16} {'workload':<9} {'ms':>8} {'GB/s':>7} {'of triad':>9}")
    for label, work, t in rows:
        bw = bytes_per[work] * n / t
        print(f"{label:<16} {work:<9} {t * 1e3:>8.2f} {bw / 1e9:>7.1f} {bw / triad_bw:>9.2f}")
    print("symnet cpu / hand-written C (target <= 1.1):")
    for work in ("swish", "gelu", "gelu_bwd"):
        ratio = best[("symnet cpu", work)] / best[("hand-written C", work)]
        print(f"  {work:<9} {ratio:.2f}")


if __name__ == "__main__":
    main()
