"""LeNet training under CPU contention: milliseconds per training iteration (batch 64)
on a quiet machine and with one busy process per available core (``python -c 'while
True: pass'``, started and stopped by this script), for symnet's ``cpu`` backend and, in
the same run, PyTorch eager (its own process, 2 threads) when it is installed.

    python benchmarks/contention.py [--rounds 5] [--iters 20] [--busy N] [--fixed-threads]

Quiet and busy phases alternate round by round; within a phase symnet and PyTorch take
turns, one idle while the other runs. Printed: the median and best per framework and
condition, each framework's busy / quiet ratio (the target is symnet <= 3) and symnet /
PyTorch in each condition. ``--fixed-threads`` turns off the runtime's adaptation
(``SYMNET_ADAPTIVE_THREADS=0``) to show what it does. Nothing is asserted: the machine
may be shared, so read the figures with the load average printed beside them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import lenet  # noqa: E402  (captures the environment before symnet's runtime loads)
import numpy as np  # noqa: E402
from _common import TorchProcess, torch_available  # noqa: E402


def start_busy(n):
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.2)                     # let them reach their loops
    return procs


def stop_busy(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="PyTorch's threads")
    ap.add_argument("--busy", type=int, default=None,
                    help="busy processes (default: the cores available)")
    ap.add_argument("--fixed-threads", action="store_true",
                    help="SYMNET_ADAPTIVE_THREADS=0: no adaptation to contention")
    args = ap.parse_args()
    if args.fixed_threads:
        os.environ["SYMNET_ADAPTIVE_THREADS"] = "0"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    nbusy = cores if args.busy is None else args.busy

    from symnet.runtime import cpu
    solver = lenet.symnet_solver(args.batch, "cpu")
    solver.step(3)
    gov = cpu.governor()
    worker = TorchProcess(lenet.__file__, ["--batch", args.batch, "--threads", args.threads]) \
        if torch_available() else None
    times = {(who, cond): [] for who in ("symnet", "torch") for cond in ("quiet", "busy")}
    threads = {"quiet": [], "busy": []}
    loads = {"quiet": [], "busy": []}

    def sym_iters(cond):
        for _ in range(args.iters):
            t0 = time.perf_counter()
            solver.step(1)
            times["symnet", cond].append(time.perf_counter() - t0)
            threads[cond].append(gov.threads)

    try:
        for _ in range(args.rounds):
            for cond in ("quiet", "busy"):
                procs = start_busy(nbusy) if cond == "busy" else []
                try:
                    sym_iters(cond)
                    if worker is not None:
                        times["torch", cond] += worker.run(args.iters)
                    loads[cond].append(os.getloadavg()[0])
                finally:
                    stop_busy(procs)
    finally:
        if worker is not None:
            worker.close()
        solver.close()

    def ms(t):
        return 1000 * float(np.median(t)), 1000 * float(np.min(t))
    n = args.rounds * args.iters
    print(f"LeNet training, batch {args.batch}: {n} iterations per framework and condition, "
          f"{args.rounds} rounds; busy = {nbusy} busy processes on {cores} cores")
    print(f"symnet: {gov.full} threads configured, adaptation "
          f"{'on' if gov.enabled else 'off'}; mean team size quiet "
          f"{np.mean(threads['quiet']):.2f}, busy {np.mean(threads['busy']):.2f}; "
          f"1-min load average quiet {np.mean(loads['quiet']):.1f}, busy "
          f"{np.mean(loads['busy']):.1f}")
    print(f"{'ms per iteration':<18}{'quiet median/best':>20}{'busy median/best':>20}"
          f"{'busy/quiet':>12}")
    for who in ("symnet", "torch"):
        if not times[who, "quiet"]:
            continue
        (qm, qb), (bm, bb) = ms(times[who, "quiet"]), ms(times[who, "busy"])
        label = "symnet cpu" if who == "symnet" else f"PyTorch ({args.threads} thr)"
        print(f"{label:<18}{qm:>11.2f} / {qb:6.2f}{bm:>11.2f} / {bb:6.2f}{bm / qm:>12.2f}")
    if times["torch", "quiet"]:
        for cond in ("quiet", "busy"):
            r = np.median(times["symnet", cond]) / np.median(times["torch", cond])
            print(f"symnet / PyTorch, {cond}: {r:.2f} (median)")
    else:
        print("PyTorch is not installed: no comparison")
    print("target: symnet busy / quiet <= 3")


if __name__ == "__main__":
    main()
