"""CIFAR10-quick training speed: milliseconds per training iteration (forward + backward
+ parameter update, batch 100, 3x32x32 inputs) for symnet's ``cpu`` backend and, in the
same run, PyTorch eager on the CPU when it is installed (both with --threads threads,
default 2: symnet's OMP_NUM_THREADS, torch.set_num_threads).

    python benchmarks/cifar10.py [--rounds 7] [--iters 5] [--batch 100] [--threads 2]

The net is Caffe's ``cifar10_quick_train_test.prototxt`` with ``input_shapes`` standing
in the Data layer and random data; the solver is cifar10_quick_solver.prototxt's SGD
(base_lr 0.001, momentum 0.9, weight decay 0.004, lr policy fixed). PyTorch runs the
same layers (conv 32 5x5 pad 2, max pool 3/2, relu, conv 32, relu, average pool 3/2,
conv 64, relu, average pool 3/2, ip 64, ip 10, softmax loss; Caffe's pooling rounds
the output size up, as ceil_mode=True) with torch.optim.SGD (biases at twice the rate,
as lr_mult 2).

PyTorch runs in a worker process (see _common.TorchProcess); the two are timed
iteration by iteration in interleaved rounds, one process idle while the other runs;
the best and the median are reported, with symnet's forward / backward / update split.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from _common import MODELS, torch_sgd_step, training_main

FOLDER = os.path.join(MODELS, "bvlc_cifar10")
NET = os.path.join(FOLDER, "cifar10_quick_train_test.prototxt")
SOLVER = os.path.join(FOLDER, "cifar10_quick_solver.prototxt")


def solver_param():
    """cifar10_quick_solver.prototxt, pointed at the corpus's net file and made to run
    without end, display, test or snapshot."""
    from symnet.formats.prototxt import parse_solver
    from symnet.formats.upgrade import upgrade_solver
    param, _ = upgrade_solver(parse_solver(SOLVER))
    param.net = NET
    param.max_iter = 10 ** 9
    param.display = 0
    for field in ("test_iter", "test_interval", "snapshot", "snapshot_prefix",
                  "test_initialization"):
        param.ClearField(field)
    param.test_initialization = False
    return param


def symnet_solver(batch, backend):
    from symnet.solver import SGDSolver
    rng = np.random.default_rng(0)
    data = rng.random((batch, 3, 32, 32), dtype=np.float32)
    label = rng.integers(0, 10, batch).astype(np.float32)
    return SGDSolver(solver_param(), backend=backend,
                     input_shapes={"data": data.shape, "label": label.shape},
                     feed=lambda s, net, i: {"data": data, "label": label})


def torch_step(batch, threads, param):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.Linear(64, 10))
    return torch_sgd_step(model, (batch, 3, 32, 32), lr=param["base_lr"],
                          weight_decay=param["weight_decay"], momentum=param["momentum"])


def main():
    def worker_args(args):
        param = solver_param()
        assert param.lr_policy == "fixed" and param.type in ("", "SGD"), param
        return ["--sgd", param.base_lr, param.momentum, param.weight_decay]

    def worker_step(args):
        lr, momentum, wd = args.sgd
        return torch_step(args.batch, args.threads,
                          {"base_lr": lr, "momentum": momentum, "weight_decay": wd})

    training_main(__file__, __doc__, "CIFAR10-quick training, batch {batch}, 3x32x32", 0.7,
                  lambda args: symnet_solver(args.batch, args.backend), worker_step,
                  iters=5, batch=100, worker_args=worker_args,
                  extra_arguments=[("--sgd", {"nargs": 3, "type": float,
                                              "help": argparse.SUPPRESS})])


if __name__ == "__main__":
    main()
