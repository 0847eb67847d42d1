"""Compile time: building a net (graph, autodiff, fusion, C build), cold and cached.

    python benchmarks/compile_time.py [--backend cpu]

Cold runs use an empty cache directory; warm runs rebuild the same net in a fresh
process-level state with the cache filled. Printed: LeNet's training net (forward and
backward compiled) and ResNet-50's deploy net (forward compiled), and the time per
layer, which should stay about flat as nets grow.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "tests", "data", "models")

CHILD = r"""
import sys, time, json
import numpy as np
t0 = time.perf_counter()
import symnet as sn
t1 = time.perf_counter()
path, phase, shapes, backward = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1"
net = sn.Net(path, sn.TRAIN if phase == "TRAIN" else sn.TEST, backend=sys.argv[5],
             input_shapes={k: tuple(v) for k, v in shapes.items()} or None)
for name, shape in shapes.items():
    net.blobs[name].data[...] = np.random.randint(0, 10, size=shape)
net.forward()
if backward:
    net.backward()
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "build": t2 - t1, "layers": len(net.layers)}))
"""


def run(path, phase, shapes, backward, backend, cache):
    import json
    env = dict(os.environ, SYMNET_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", CHILD, path, phase, json.dumps(shapes),
                          "1" if backward else "0", backend], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cpu")
    args = ap.parse_args()
    cases = [
        ("LeNet training (fwd+bwd)", os.path.join(MODELS, "bvlc_mnist",
                                                  "lenet_train_test.prototxt"),
         "TRAIN", {"data": [64, 1, 28, 28], "label": [64]}, True, (3.0, 0.3)),
        ("ResNet-50 deploy (fwd)", os.path.join(MODELS, "resnet", "ResNet-50-deploy.prototxt"),
         "TEST", {}, False, (15.0, 1.0)),
    ]
    print(f"{'net':<26} {'layers':>6} {'cold s':>8} {'cached s':>9} {'ms/layer cold':>14} "
          f"{'target cold/cached':>19}")
    for label, path, phase, shapes, backward, target in cases:
        with tempfile.TemporaryDirectory() as cache:
            cold = run(path, phase, shapes, backward, args.backend, cache)
            warm = run(path, phase, shapes, backward, args.backend, cache)
        print(f"{label:<26} {cold['layers']:>6} {cold['build']:>8.2f} {warm['build']:>9.2f} "
              f"{1e3 * cold['build'] / cold['layers']:>14.1f} "
              f"{target[0]:>9.1f} / {target[1]:.1f}")
    print("(build = graph, autodiff, fusion, code generation, C compile or cache load, and "
          "the first run; the Python import is excluded)")


if __name__ == "__main__":
    main()
