"""Data-parallel training speed under MPI: images per second for 1 and 2 ranks on LeNet
(batch 64 per rank, 1x28x28) and CIFAR10-quick (batch 64 per rank, 3x32x32), and the
fraction of a training step spent in the gradient Allreduce.

    python benchmarks/distributed.py [--rounds 3] [--iters 20] [--batch 64]
                                     [--threads 1] [--nets lenet,cifar10]

Each configuration runs in its own processes: ``python distributed.py --worker`` alone
(1 rank) and under ``mpiexec -n 2`` (2 ranks), each rank with ``--threads`` OpenMP
threads (default 1: 2 ranks on a 2-core machine use one core each). A worker builds the
solver of benchmarks/lenet.py or benchmarks/cifar10.py (random data fed to the Input
blobs, the same on every rank), runs 3 warm-up iterations, then times ``--iters``
iterations of ``solver.step``; rank 0 reports the wall time and the seconds its
Allreduce calls took. The 1- and 2-rank runs alternate in ``--rounds`` rounds; the
median of the rounds is printed (the machine may be shared). Images per second count
every rank's batch: ranks * batch * iterations / time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MPI_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_SIZE", "PMIX_RANK",
            "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "SYMNET_MPI")


def worker(args):
    sys.path.insert(0, HERE)
    import cifar10
    import lenet
    module = {"lenet": lenet, "cifar10": cifar10}[args.net]
    solver = module.symnet_solver(args.batch, args.backend)
    solver.step(3)
    sync = solver._sync
    if sync is not None:
        sync.comm.Barrier()
        sync.allreduce_seconds, sync.allreduce_calls = 0.0, 0
    t0 = time.perf_counter()
    solver.step(args.iters)
    if sync is not None:
        sync.comm.Barrier()
    seconds = time.perf_counter() - t0
    if solver.is_root:
        print(json.dumps({"seconds": seconds, "ranks": solver.world.size,
                          "allreduce_seconds": sync.allreduce_seconds if sync else 0.0,
                          "allreduce_calls": sync.allreduce_calls if sync else 0}),
              flush=True)


def run(net, ranks, args):
    env = {k: v for k, v in os.environ.items() if k not in MPI_VARS}
    env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--net", net,
           "--batch", str(args.batch), "--iters", str(args.iters), "--backend",
           args.backend]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                               + env.get("PATH", ""))
        if mpiexec is None:
            raise SystemExit("mpiexec not found: pip install mpi4py mpich")
        cmd = [mpiexec, "-n", str(ranks)] + cmd
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--nets", default="lenet,cifar10")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--net", default="lenet", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    print(f"backend {args.backend}, batch {args.batch} per rank, {args.iters} timed "
          f"iterations, OMP_NUM_THREADS={args.threads} per rank, {args.rounds} rounds, "
          f"{os.cpu_count()} cores")
    for net in args.nets.split(","):
        results = {1: [], 2: []}
        for _ in range(args.rounds):
            for ranks in (1, 2):
                results[ranks].append(run(net, ranks, args))
        for ranks, rs in results.items():
            ips = statistics.median(ranks * args.batch * args.iters / r["seconds"]
                                    for r in rs)
            frac = statistics.median(r["allreduce_seconds"] / r["seconds"] for r in rs)
            step_ms = statistics.median(1e3 * r["seconds"] / args.iters for r in rs)
            print(f"{net:8s} {ranks} rank{'s' if ranks > 1 else ' '}: {ips:8.1f} images/s, "
                  f"{step_ms:7.2f} ms/step, Allreduce {100 * frac:5.2f}% of a step "
                  f"(median of {len(rs)})")


if __name__ == "__main__":
    main()
