"""Shared pieces of the benchmarks: timing, the PyTorch worker process, the corpus.

Import this module before symnet: it keeps a copy of the environment as the script
was given it (symnet's runtime sets OpenMP variables in its own process when it is
imported), which the PyTorch worker process is started with.
"""
from __future__ import annotations

import os

ENVIRONMENT = dict(os.environ)      # before symnet's runtime sets anything

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = os.path.join(ROOT, "tests", "data", "models")


def corpus_helpers():
    """tests/caffe/caffe_corpus_help.py (random weights, BatchNorm calibration, the
    declared input shapes), which the OpenCV comparison test uses too."""
    folder = os.path.join(ROOT, "tests", "caffe")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import caffe_corpus_help
    return caffe_corpus_help


def per_iter(fn, iters):
    """Seconds of each of ``iters`` calls."""
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def ms(times):
    """(best, median) of a list of seconds, in milliseconds."""
    return 1000 * float(np.min(times)), 1000 * float(np.median(times))


def geomean(values):
    values = [v for v in values if v > 0]
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def load_text():
    """The 1-minute, 5-minute and 15-minute load averages, as text."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def torch_available():
    try:
        return importlib.util.find_spec("torch") is not None
    except ValueError:
        return False


def torch_sgd_step(model, x_shape, lr, weight_decay, momentum):
    """A PyTorch training step of ``model`` on fixed random inputs of ``x_shape`` and
    labels: SGD with momentum and weight decay, biases at twice the rate (Caffe's
    lr_mult 2 in the corpus solvers), cross-entropy loss."""
    import torch
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": weight_decay},
                           {"params": biases, "lr": 2 * lr, "weight_decay": weight_decay}],
                          lr=lr, momentum=momentum)
    x = torch.rand(*x_shape)
    y = torch.randint(0, 10, (x_shape[0],))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def serve(step, warmup=3):
    """The worker side: warm ``step`` up, then answer timing requests on stdin (a line
    with a count runs that many calls and answers with their seconds as JSON)."""
    for _ in range(warmup):
        step()
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(per_iter(step, int(line))), flush=True)


class TorchProcess:
    """A worker process running ``script --torch-worker *args`` with the environment
    as the benchmark was given it, so PyTorch keeps its own threading settings; the
    worker calls ``serve``. It is idle while the benchmark times anything else."""

    def __init__(self, script, args):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(script), "--torch-worker", *map(str, args)],
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


def time_solver_parts(solver, iters, parts):
    """Append the seconds of ``iters`` forward, backward and update passes of a symnet
    solver's net to parts["forward"], parts["backward"], parts["update"]; the
    parameters and the update history are restored afterwards (the passes leave no
    trace on the training being timed)."""
    memories = [m for g in solver._layout for m in [g["data"]] + g["hist"]]
    saved = [(m, np.array(m.host_read())) for m in memories]
    net = solver.net
    feed = solver.feed(solver, net, 0)
    parts["forward"] += per_iter(lambda: net.forward(**feed), iters)
    parts["backward"] += per_iter(net.backward, iters)
    parts["update"] += per_iter(solver.apply_update, iters)
    for m, copy in saved:
        m.host_write()[...] = copy


def print_solver_result(name, backend, sym, parts, solver, tor, threads, target):
    """The lines lenet.py and cifar10.py print: best / median ms per iteration of
    symnet (with its forward / backward / update split) and of PyTorch, and the
    ratio against the target."""
    best, med = ms(sym)
    print(f"symnet {backend:<8} {best:8.2f} / {med:8.2f}   (one plan per step; "
          f"separately, best forward {ms(parts['forward'])[0]:.2f}, backward "
          f"{ms(parts['backward'])[0]:.2f}, update {ms(parts['update'])[0]:.2f}; "
          f"update kernels: {len(solver.update_function().report())})")
    if tor:
        tbest, tmed = ms(tor)
        print(f"PyTorch eager  {tbest:8.2f} / {tmed:8.2f}   ({threads} threads, own "
              "process)")
        print(f"ratio symnet / PyTorch: {best / tbest:.2f} best, {med / tmed:.2f} median "
              f"(target <= {target})")
    else:
        print(f"PyTorch is not installed: no comparison ({name})")


def set_symnet_threads(threads):
    """symnet's CPU kernels run ``threads`` OpenMP threads: OMP_NUM_THREADS, set before
    symnet compiles or loads anything (call it before importing symnet)."""
    if "symnet" in sys.modules:
        raise RuntimeError("set the thread count before importing symnet")
    os.environ["OMP_NUM_THREADS"] = str(threads)


def training_main(script, doc, title, target, symnet_solver, torch_step, *, iters, batch,
                  worker_args=lambda args: [], extra_arguments=()):
    """main() of lenet.py and cifar10.py: parse the arguments (--rounds, --iters, --batch,
    --threads, --backend and ``extra_arguments``, (flag, keywords) pairs), or serve as the
    PyTorch worker (``torch_step(args)`` gives its step); otherwise build
    ``symnet_solver(args)``, warm it up, start the worker (given --batch, --threads and
    ``worker_args(args)``), time both interleaved, and print the result against
    ``target``. ``title`` is the first line's start, formatted with the batch size."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=iters)
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    for flag, keywords in extra_arguments:
        ap.add_argument(flag, **keywords)
    args = ap.parse_args()
    if args.torch_worker:
        serve(torch_step(args))
        return

    set_symnet_threads(args.threads)
    solver = symnet_solver(args)
    solver.step(3)                                  # compile and warm up
    worker = TorchProcess(script, ["--batch", args.batch, "--threads", args.threads,
                                   *worker_args(args)]) if torch_available() else None

    sym, tor, parts = [], [], {"forward": [], "backward": [], "update": []}
    for _ in range(args.rounds):
        sym += per_iter(lambda: solver.step(1), args.iters)
        if worker is not None:
            tor += worker.run(args.iters)
        time_solver_parts(solver, args.iters, parts)
    if worker is not None:
        worker.close()
    n = args.rounds * args.iters
    print(f"{title.format(batch=args.batch)}: {n} iterations each, interleaved in "
          f"{args.rounds} rounds; {args.threads} threads; load average {load_text()}; "
          "ms per iteration, best / median")
    print_solver_result(title.split(" ")[0], args.backend, sym, parts, solver, tor,
                        args.threads, target)
    solver.close()
