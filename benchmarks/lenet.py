"""LeNet training speed: milliseconds per training iteration (forward + backward +
parameter update, batch 64, 1x28x28 inputs) for symnet's ``cpu`` backend and, in the
same run, PyTorch eager on the CPU when it is installed (2 threads).

    python benchmarks/lenet.py [--rounds 7] [--iters 10] [--batch 64] [--threads 2]

The net is Caffe's ``lenet_train_test.prototxt`` with ``input_shapes`` standing in the
Data layer and random data; the solver is lenet_solver.prototxt's SGD (momentum 0.9,
weight decay 5e-4, lr policy inv). PyTorch runs the same layers (conv 20, pool, conv 50,
pool, ip 500, relu, ip 10, softmax loss) with torch.optim.SGD (biases at twice the
rate, as lr_mult 2). Both are timed iteration by iteration in interleaved rounds; the
best and the median are reported (the machine may be shared), with symnet's forward /
backward / update split.
"""
from __future__ import annotations

import os

# PyTorch brings its own OpenMP runtime; idle threads of two runtimes spin-waiting on 2
# cores slow whichever runs next. Idle threads sleep instead (set before any loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from symnet.caffe.proto import caffe_pb2  # noqa: E402
from symnet.solver import SGDSolver  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
NET = os.path.join(HERE, "..", "tests", "data", "models", "bvlc_mnist",
                   "lenet_train_test.prototxt")


def symnet_solver(batch, backend):
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
    try:
        import torch
    except ImportError:
        return None
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="cpu")
    args = ap.parse_args()

    solver = symnet_solver(args.batch, args.backend)
    solver.step(3)                                  # compile and warm up
    net = solver.net
    tstep = torch_step(args.batch, args.threads)
    if tstep is not None:
        for _ in range(3):
            tstep()

    sym, tor, parts = [], [], {"forward": [], "backward": [], "update": []}
    for _ in range(args.rounds):
        sym += per_iter(lambda: solver.step(1), args.iters)
        if tstep is not None:
            tor += per_iter(tstep, args.iters)
        saved = [(a, a.copy()) for g in solver._layout for a in [g["data"]] + g["hist"]]
        feed = solver.feed(solver, net, 0)
        parts["forward"] += per_iter(lambda: net.forward(**feed), args.iters)
        parts["backward"] += per_iter(net.backward, args.iters)
        parts["update"] += per_iter(solver.apply_update, args.iters)
        for a, copy in saved:               # the parts' passes leave no trace
            a[...] = copy

    def ms(times):
        return 1000 * float(np.min(times)), 1000 * float(np.median(times))
    n = args.rounds * args.iters
    print(f"LeNet training, batch {args.batch}, 1x28x28: {n} iterations each, interleaved "
          f"in {args.rounds} rounds; ms per iteration, best / median")
    best, med = ms(sym)
    print(f"symnet {args.backend:<8} {best:8.2f} / {med:8.2f}   (best forward "
          f"{ms(parts['forward'])[0]:.2f}, backward {ms(parts['backward'])[0]:.2f}, update "
          f"{ms(parts['update'])[0]:.2f}; update kernels: "
          f"{len(solver.update_function().report())})")
    if tor:
        tbest, tmed = ms(tor)
        print(f"PyTorch eager  {tbest:8.2f} / {tmed:8.2f}   ({args.threads} threads)")
        print(f"ratio symnet / PyTorch: {best / tbest:.2f} best, {med / tmed:.2f} median "
              "(target <= 0.7)")
    else:
        print("PyTorch is not installed: no comparison")
    solver.close()


if __name__ == "__main__":
    main()
