"""LeNet training speed: milliseconds per training iteration (forward + backward +
parameter update, batch 64, 1x28x28 inputs) for symnet's ``cpu`` backend and, in the
same run, PyTorch eager on the CPU when it is installed (both with --threads threads,
default 2: symnet's OMP_NUM_THREADS, torch.set_num_threads).

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

import numpy as np

from _common import MODELS, torch_sgd_step, training_main

NET = os.path.join(MODELS, "bvlc_mnist", "lenet_train_test.prototxt")


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
    return torch_sgd_step(model, (batch, 1, 28, 28), lr=0.01, weight_decay=5e-4, momentum=0.9)


def main():
    training_main(__file__, __doc__, "LeNet training, batch {batch}, 1x28x28", 0.6,
                  lambda args: symnet_solver(args.batch, args.backend),
                  lambda args: torch_step(args.batch, args.threads), iters=10, batch=64)


if __name__ == "__main__":
    main()
