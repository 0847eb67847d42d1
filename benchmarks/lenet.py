"""LeNet training speed: milliseconds per training iteration (forward + backward +
parameter update, batch 64, 1x28x28 inputs) for symnet's ``cpu`` backend and, in the
same run, PyTorch eager on the CPU when it is installed (2 threads).

    python benchmarks/lenet.py [--rounds 7] [--iters 10] [--batch 64] [--threads 2]

The net is Caffe's ``lenet_train_test.prototxt`` with ``input_shapes`` standing in the
Data layer and random data; the solver is lenet_solver.prototxt's SGD (momentum 0.9,
weight decay 5e-4, lr policy inv). PyTorch runs the same layers (conv 20, pool, conv 50,
pool, ip 500, relu, ip 10, softmax loss) with torch.optim.SGD (biases at twice the
rate, as lr_mult 2).

PyTorch runs in a worker process started with this script's environment as it was
given, so each framework keeps its own default threading settings (symnet's runtime
shortens OpenMP's spin-wait in its own process; PyTorch's OpenMP is left as it comes).
The two are timed iteration by iteration in interleaved rounds, one process idle while
the other runs; the best and the median are reported (the machine may be shared), with
symnet's forward / backward / update split.
"""
from __future__ import annotations

import os

ENVIRONMENT = dict(os.environ)      # before symnet's runtime sets anything

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
NET = os.path.join(HERE, "..", "tests", "data", "models", "bvlc_mnist",
                   "lenet_train_test.prototxt")


def symnet_solver(batch, backend):
    from symnet.formats.proto import caffe_pb2
    from symnet.solver import SGDSolver
    param = caffe_pb2.SolverParameter(net=NET, base_lr=0.01, momentum=0.9,
                                      weight_decay=5e-4, lr_policy="inv", gamma=1e-4,
                                      power=0.75, max_iter=10 ** 9, display=0)
    rng = np.random.default_rng(0)
    data = rng.random((batch, 1, 28, 28), dtype=np.float32)
    label = rng.integers(0, 10, batch).astype(np.float32)
    return SGDSolver(param, backend=backend,
                     input_shapes={"data": data.shape, "label": label.shape},
                     feed=lambda s, net, i: {"data": data, "label": label})


def torch_step(batch, threads):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5),
                          nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(),
                          nn.Linear(500, 10))
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": 5e-4},
                           {"params": biases, "lr": 0.02, "weight_decay": 5e-4}],
                          lr=0.01, momentum=0.9)
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def per_iter(fn, iters):
    """Seconds of each of ``iters`` calls."""
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def torch_worker(batch, threads):
    """Serve timing requests on stdin: a line with a count runs that many iterations
    and answers with their seconds as a JSON list."""
    step = torch_step(batch, threads)
    for _ in range(3):
        step()
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(per_iter(step, int(line))), flush=True)


class TorchProcess:
    def __init__(self, batch, threads):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--torch-worker", "--batch",
             str(batch), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENVIRONMENT)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the PyTorch worker did not start")

    def run(self, iters):
        self.proc.stdin.write(f"{iters}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def torch_available():
    try:
        import importlib.util
        return importlib.util.find_spec("torch") is not None
    except ValueError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        torch_worker(args.batch, args.threads)
        return

    solver = symnet_solver(args.batch, args.backend)
    solver.step(3)                                  # compile and warm up
    net = solver.net
    worker = TorchProcess(args.batch, args.threads) if torch_available() else None

    sym, tor, parts = [], [], {"forward": [], "backward": [], "update": []}
    for _ in range(args.rounds):
        sym += per_iter(lambda: solver.step(1), args.iters)
        if worker is not None:
            tor += worker.run(args.iters)
        saved = [(a, a.copy()) for g in solver._layout for a in [g["data"]] + g["hist"]]
        feed = solver.feed(solver, net, 0)
        parts["forward"] += per_iter(lambda: net.forward(**feed), args.iters)
        parts["backward"] += per_iter(net.backward, args.iters)
        parts["update"] += per_iter(solver.apply_update, args.iters)
        for a, copy in saved:               # the parts' passes leave no trace
            a[...] = copy
    if worker is not None:
        worker.close()

    def ms(times):
        return 1000 * float(np.min(times)), 1000 * float(np.median(times))
    n = args.rounds * args.iters
    print(f"LeNet training, batch {args.batch}, 1x28x28: {n} iterations each, interleaved "
          f"in {args.rounds} rounds; ms per iteration, best / median")
    best, med = ms(sym)
    print(f"symnet {args.backend:<8} {best:8.2f} / {med:8.2f}   (one plan per step; "
          f"separately, best forward {ms(parts['forward'])[0]:.2f}, backward "
          f"{ms(parts['backward'])[0]:.2f}, update {ms(parts['update'])[0]:.2f}; "
          f"update kernels: {len(solver.update_function().report())})")
    if tor:
        tbest, tmed = ms(tor)
        print(f"PyTorch eager  {tbest:8.2f} / {tmed:8.2f}   ({args.threads} threads, own "
              "process)")
        print(f"ratio symnet / PyTorch: {best / tbest:.2f} best, {med / tmed:.2f} median "
              "(target <= 0.7)")
    else:
        print("PyTorch is not installed: no comparison")
    solver.close()


if __name__ == "__main__":
    main()
