"""Compile time of an unrolled LSTM against its length T (issue 16: T = 100 steps of a
256-unit LSTM should compile in under 10 s cold).

    python benchmarks/compile_time_lstm.py [--steps 25 50 100] [--hidden 256] [--backend cpu]
                                           [--rounds 1]

Each length runs in a fresh process with an empty cache directory (cold) and again with
the cache filled (cached). The net is Input -> LSTM (num_output H, input 8, N 4
streams) -> EuclideanLoss, built in TRAIN; the time covers the net's graph, the forward
and the backward compiled and run once (what the first solver step costs). The cold
time is split into the phases it is spent in:

    graph     the Net's graph (the layer's unrolled steps)
    autodiff  symnet.autodiff.vjp (backward through time)
    fusion    codegen.fusion.partition
    lower     the rest of lowering: kernel text (sympy printing, cse), launches, buffers
    cc        the C compiler (subprocesses of runtime.cache)
    other     everything else (executor setup, the runs themselves)

and per step ("ms/step"), which should stay about flat as T grows if compile time is
linear in T. With ``--rounds R`` the lengths are measured R times, interleaved (every
length once per round), and the medians are printed; the load average is printed
before and after, as the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import sys, time, json, subprocess
import numpy as np
T, H, backend = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
import symnet as sn
import symnet.net as net_mod
import symnet.codegen.lower as lower_mod
import symnet.runtime.cache as cache_mod

spent = {"autodiff": 0.0, "fusion": 0.0, "lower": 0.0, "cc": 0.0}

def timed(key, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[key] += time.perf_counter() - t
    return wrapper

net_mod.vjp = timed("autodiff", net_mod.vjp)
lower_mod.partition = timed("fusion", lower_mod.partition)
lower_mod.lower = timed("lower", lower_mod.lower)
cache_mod.subprocess = type(sys)("subprocess_timed")
cache_mod.subprocess.__dict__.update(subprocess.__dict__)
cache_mod.subprocess.run = timed("cc", subprocess.run)

N, I = 4, 8
text = f'''
layer {{ name: "in" type: "Input" top: "x" top: "cont" top: "target"
  input_param {{ shape {{ dim: {T} dim: {N} dim: {I} }} shape {{ dim: {T} dim: {N} }}
                 shape {{ dim: {T} dim: {N} dim: {H} }} }} }}
layer {{ name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
  recurrent_param {{ num_output: {H} weight_filler {{ type: "uniform" min: -0.08 max: 0.08 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "target" top: "loss" }}
'''
t0 = time.perf_counter()
net = sn.Net(text, sn.TRAIN, backend=backend)
t1 = time.perf_counter()
net.blobs["x"].data[...] = np.random.default_rng(0).standard_normal((T, N, I))
net.blobs["cont"].data[...] = 1
net.blobs["cont"].data[0] = 0
net.forward()
net.backward()
t2 = time.perf_counter()
spent["lower"] -= spent["fusion"]
total = t2 - t0
out = {"total": total, "graph": t1 - t0, **spent}
out["other"] = total - sum(out[k] for k in ("graph", "autodiff", "fusion", "lower", "cc"))
print(json.dumps(out))
"""

PHASES = ("graph", "autodiff", "fusion", "lower", "cc", "other")


def run(steps, hidden, backend, cache):
    env = dict(os.environ, SYMNET_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", CHILD, str(steps), str(hidden), backend],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every length this many times, interleaved; medians")
    args = ap.parse_args()
    print(f"LSTM num_output {args.hidden}, N 4, input 8, TRAIN (forward + backward), "
          f"backend {args.backend}; seconds" +
          (f"; medians of {args.rounds} interleaved rounds" if args.rounds > 1 else ""))
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    got = {steps: [] for steps in args.steps}
    for _ in range(max(1, args.rounds)):
        for steps in args.steps:
            with tempfile.TemporaryDirectory() as cache:
                cold = run(steps, args.hidden, args.backend, cache)
                warm = run(steps, args.hidden, args.backend, cache)
            got[steps].append((cold, warm))
    print(f"{'T':>5} {'cold':>7} {'cached':>7} {'ms/step':>8}  " +
          " ".join(f"{p:>8}" for p in PHASES))
    for steps, runs in got.items():
        cold = {k: statistics.median(c[k] for c, _ in runs) for k in runs[0][0]}
        warm = statistics.median(w["total"] for _, w in runs)
        print(f"{steps:>5} {cold['total']:>7.2f} {warm:>7.2f} "
              f"{1e3 * cold['total'] / steps:>8.1f}  " +
              " ".join(f"{cold[p]:>8.2f}" for p in PHASES))
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())
    print("target: T = 100 under 10 s cold (phases: the cold run; Python import excluded)")


if __name__ == "__main__":
    main()
