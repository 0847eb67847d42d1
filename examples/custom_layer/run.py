"""Run Mish as a Caffe Python layer and as a symbolic layer; check they agree.

    python examples/custom_layer/run.py [--backend cpu]

Both nets get the same weights and inputs; forward outputs, the input gradient and
the parameter gradients must match. The symbolic version's layers fuse with their
neighbours, so it runs in fewer kernels.
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import symnet as sn  # noqa: E402


def kernels(net):
    """Kernel launches and host calls of the net's forward and backward plans."""
    counts = {"kernel": 0, "host": 0, "library": 0}
    for fn in net.functions():
        for row in fn.report() if fn is not None else []:
            counts[row["kind"]] += 1
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="cpu")
    args = ap.parse_args()
    py = sn.Net(os.path.join(HERE, "net_python.prototxt"), sn.TRAIN, backend=args.backend)
    sym = sn.Net(os.path.join(HERE, "net_symbolic.prototxt"), sn.TRAIN, backend=args.backend,
                 layer_modules=["mylayers"])
    for name, blobs in py.params.items():
        for a, b in zip(blobs, sym.params[name]):
            b.data[...] = a.data
    rng = np.random.default_rng(0)
    data = rng.standard_normal(py.blobs["data"].shape).astype(np.float32)
    target = rng.standard_normal(py.blobs["target"].shape).astype(np.float32)
    for net in (py, sym):
        net.forward(data=data, target=target)
        net.backward()
    worst = 0.0
    pairs = [("loss", py.blobs["loss"].data, sym.blobs["loss"].data),
             ("data diff", py.blobs["data"].diff, sym.blobs["data"].diff)]
    for name in py.params:
        for i, (a, b) in enumerate(zip(py.params[name], sym.params[name])):
            pairs.append((f"{name}[{i}] diff", a.diff, b.diff))
    for label, a, b in pairs:
        err = float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12))
        worst = max(worst, err)
        print(f"{label:<16} relative difference {err:.2e}")
    print(f"Python layer net: {kernels(py)}")
    print(f"symbolic net:     {kernels(sym)}")
    if worst > 1e-4:
        raise SystemExit(f"the two versions disagree (worst relative difference {worst:.2e})")
    print("the Python layer and the symbolic layer agree")


if __name__ == "__main__":
    main()
