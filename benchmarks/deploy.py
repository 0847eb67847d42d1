"""Inference speed on the corpus's deploy nets: symnet's ``cpu`` backend against
OpenCV's dnn module (``cv2.dnn.readNetFromCaffe``, default settings), same prototxt,
same weights, same input, same thread count, in one process.

    python benchmarks/deploy.py [--nets resnet50,googlenet] [--batch 1,8] [--threads 2]
                                [--rounds 15] [--winograd-off] [--profile]

For each net and batch size: symnet builds the net from tests/data/models, gets seeded
random weights (He-scaled, BatchNorm statistics calibrated on the input; the helpers of
tests/caffe/test_opencv_compare.py) and writes them as a .caffemodel, which OpenCV reads
with the same prototxt. The outputs OpenCV reports for the net (its unconnected output
layers) are compared with symnet's blobs: max|symnet - OpenCV| / max|OpenCV|, flagged
when above 1e-3. Then, after warm-up, the two run interleaved round-robin (symnet,
OpenCV, symnet, ...), each sample timing ``k`` consecutive forwards (k chosen so a sample
lasts at least about 5 ms; 1 for all but the small nets); medians per forward are
printed with the ratio symnet / OpenCV and the geometric mean of the ratios. The target
is every ratio <= 0.8. Times are printed, never asserted: the machine may be shared, so
the load average is printed before and after.

Threads: symnet's kernels run --threads OpenMP threads (OMP_NUM_THREADS, set before
symnet is imported), OpenCV --threads (cv2.setNumThreads). A forward includes setting
the input on both sides (symnet's net.forward(data=...), OpenCV's setInput + forward).

--winograd-off adds a column with OpenCV's Winograd convolution disabled
(cv2.dnn.Net.enableWinograd(False)), timed in the same rounds. --profile prints, for each
net and batch, the five most expensive steps of symnet's plan (``Net.time``), with their
kind, milliseconds and share of the plan's time.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np

from _common import MODELS, corpus_helpers, geomean, load_text, set_symnet_threads

# name: (file under tests/data/models, spatial size instead of the declared one)
NETS = {
    "lenet": ("bvlc_mnist/lenet.prototxt", None),
    "mnist_siamese": ("bvlc_siamese/mnist_siamese.prototxt", None),
    "cifar10_quick": ("bvlc_cifar10/cifar10_quick.prototxt", None),
    "cifar10_full": ("bvlc_cifar10/cifar10_full.prototxt", None),
    "caffenet": ("bvlc_caffenet/deploy.prototxt", None),
    "alexnet": ("bvlc_alexnet/deploy.prototxt", None),
    "googlenet": ("bvlc_googlenet/deploy.prototxt", None),
    "squeezenet1.1": ("squeezenet_v1.1/deploy.prototxt", None),
    "resnet50": ("resnet/ResNet-50-deploy.prototxt", None),
    "mobilenet": ("mobilenet/mobilenet_deploy.prototxt", None),
    "mobilenet_v2": ("mobilenet/mobilenet_v2_deploy.prototxt", None),
    "mtcnn_det1": ("mtcnn/det1.prototxt", None),
    "mtcnn_det2": ("mtcnn/det2.prototxt", None),
    "mtcnn_det4": ("mtcnn/det4.prototxt", None),
    # FCN-8s pads its input by 100: at the declared 500 x 500 a forward is a VGG-16 over
    # 700 x 700 (about 200 GFLOP); 128 x 160 (as in the OpenCV comparison test) keeps
    # the same layers at about a sixth of that.
    "fcn8s": ("fcn_voc8s/deploy.prototxt", (128, 160)),
}

# Corpus deploy files not measured by default, and why.
SKIPPED = {
    "fcn8s": "VGG-16 sized (about 30 GFLOP per image even at 128 x 160): seconds per "
             "forward on 2 cores; name it in --nets to run it",
    "caffenet_v1/deploy.prototxt": "V1 copy of caffenet (the same net after upgrade)",
    "cifar10_v1/cifar10_quick.prototxt": "V1 copy of cifar10_quick",
    "mnist_v1/lenet.prototxt": "V1 copy of lenet",
    "mnist_input_shape/lenet.prototxt": "lenet declared with input_shape (the same net)",
}
DEFAULT = [n for n in NETS if n not in SKIPPED]

RTOL = 1e-3          # flag: max|symnet - OpenCV| > RTOL * max|OpenCV|
SAMPLE_SECONDS = 0.005


def input_shapes(cch, param, batch, spatial):
    out = {}
    for blob, shape in cch.declared_input_shapes(param).items():
        out[blob] = (batch, shape[1]) + tuple(spatial or shape[2:])
    return out


def opencv_net(cv2, prototxt, caffemodel, winograd=True):
    net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    if not winograd:
        net.enableWinograd(False)
    return net


def opencv_forward(net, inputs, names):
    for blob, array in inputs.items():
        net.setInput(array, blob)
    return net.forward(names)


def relative_diff(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64).reshape(ref.shape) \
        if got.size == ref.size else got
    if got.shape != ref.shape:
        return math.inf
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    return err / scale if scale > 0 else err


def step_kind(step, layer_info):
    """What a plan step computes, from its kernel name and the layers it serves."""
    name = step["name"]
    types = [layer_info.get(l, ("?", 1))[0] for l in step["layers"]]
    groups = [layer_info.get(l, ("?", 1))[1] for l in step["layers"]]
    if name.startswith("sn_im2col"):
        return "im2col"
    if name.startswith("sn_conv_images"):
        return "conv im2col+GEMM per image"
    if name.startswith("sn_conv_panels"):
        return "conv panels (padded image, no columns)"
    if name.startswith("sn_conv_winograd"):
        return "conv Winograd"
    if name.startswith("sn_gemm"):
        if "InnerProduct" in types:
            return "FC GEMM"
        if "Deconvolution" in types:
            return "deconv GEMM"
        if any(g > 1 for g in groups):
            return "grouped conv GEMM"
        return "conv GEMM"
    if "pool" in name:
        return "pool"
    if name.startswith("sn_window_sum"):
        return "LRN window sum"
    if name.startswith("k_copy"):
        return "copy (concat/slice)"
    if any(t in ("Convolution", "Deconvolution") and g > 1 for t, g in zip(types, groups)):
        return "depthwise/grouped conv (direct)"
    if name.startswith("k_fc") or "InnerProduct" in types:
        return "FC (generated)"
    if name.startswith("sn_"):
        return name
    kinds = sorted({t for t in types if t not in ("?",)})
    return "elementwise (" + ", ".join(kinds)[:40] + ")"


def profile(net, iterations):
    """The plan's steps with their kind, ms and share, most expensive first."""
    layer_info = {}
    for layer in net._layers:
        group = 1
        if layer.type in ("Convolution", "Deconvolution"):
            group = layer.source.convolution_param.group or 1
        layer_info[layer.name] = (layer.type, group)
    report = net.time(iterations)
    steps = [s for s in report["steps"] if s["phase"] == "forward"]
    total = sum(s["ms"] for s in steps)
    rows = [(float(s["ms"]), step_kind(s, layer_info), s["name"], s["layers"]) for s in steps]
    rows.sort(key=lambda r: -r[0])
    return total, len(steps), rows


def timed(fn, k):
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t0) / k


def measure(name, batch, args, cv2, sn, cch, workdir):
    """One net at one batch size: a dict of the results."""
    file, spatial = NETS[name]
    path = os.path.join(MODELS, file)
    param = cch.load_net_param(file)
    shapes = input_shapes(cch, param, batch, spatial)

    net = sn.Net(path, sn.TEST, backend="cpu", input_shapes=shapes)
    cch.randomize_params(net, seed=0)
    rng = np.random.default_rng(1)
    inputs = {b: rng.standard_normal(s).astype(np.float32) for b, s in shapes.items()}
    cch.calibrate_batch_norm(param, net, inputs, seed=2, backend="cpu")
    net.forward(**inputs)
    caffemodel = os.path.join(workdir, f"{name}.caffemodel")
    net.save(caffemodel)

    variants = {"opencv": opencv_net(cv2, path, caffemodel)}
    if args.winograd_off:
        variants["opencv_nowino"] = opencv_net(cv2, path, caffemodel, winograd=False)
    names = list(variants["opencv"].getUnconnectedOutLayersNames())
    first_top = {layer.name: layer.tops[0] for layer in net._layers}

    diffs = {}
    for key, cvnet in variants.items():
        outs = opencv_forward(cvnet, inputs, names)
        diffs[key] = max(relative_diff(net.blobs[first_top[n]].data, o)
                         for n, o in zip(names, outs))

    fns = {"symnet": lambda: net.forward(**inputs)}
    for key, cvnet in variants.items():
        fns[key] = (lambda c: lambda: opencv_forward(c, inputs, names))(cvnet)
    warm = {key: min(timed(fn, 1) for _ in range(2)) for key, fn in fns.items()}
    k = max(1, math.ceil(SAMPLE_SECONDS / max(warm.values())))
    samples = {key: [] for key in fns}
    for _ in range(args.rounds):
        for key, fn in fns.items():              # round-robin: symnet, OpenCV, ...
            samples[key].append(timed(fn, k))
    result = {"net": name, "batch": batch, "k": k, "diff": diffs,
              "ms": {key: 1000 * float(np.median(v)) for key, v in samples.items()}}
    if args.profile:
        result["profile"] = profile(net, args.profile_iters)
    net.close()
    return result


def print_row(r, columns):
    base = r["ms"]["symnet"]
    cells = [f"{r['net']:<14} {r['batch']:>3} {base:10.2f}"]
    for key in columns:
        cells.append(f"{r['ms'][key]:10.2f} {base / r['ms'][key]:6.2f}")
    flag = [f"{r['diff'][key]:.1e}" + (" MISMATCH" if r["diff"][key] > RTOL else "")
            for key in columns]
    print("  ".join(cells) + f"  {r['k']:>3}  " + " / ".join(flag), flush=True)


def print_profile(r):
    total, count, rows = r["profile"]
    print(f"\n{r['net']} batch {r['batch']}: {count} forward steps, {total:.2f} ms "
          "in all (Net.time)")
    for ms_, kind, kernel, layers in rows[:5]:
        shown = ", ".join(layers)
        if len(shown) > 48:
            shown = shown[:45] + "..."
        print(f"  {ms_:9.3f} ms {100 * ms_ / total:5.1f}%  {kind:<34} {kernel:<28} "
              f"{shown}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default=",".join(DEFAULT),
                    help="comma-separated, of: " + ", ".join(NETS))
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--winograd-off", action="store_true",
                    help="also time OpenCV with its Winograd convolution disabled")
    ap.add_argument("--profile", action="store_true",
                    help="print the 5 most expensive steps of symnet's plan per net")
    ap.add_argument("--profile-iters", type=int, default=5)
    args = ap.parse_args()
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in nets if n not in NETS]
    if unknown:
        ap.error(f"unknown nets {unknown}; known: {', '.join(NETS)}")
    batches = [int(b) for b in args.batch.split(",")]

    set_symnet_threads(args.threads)
    try:
        import cv2
    except ImportError:
        sys.exit("needs opencv-python-headless<5 (pip install 'symnet[dev]')")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        sys.exit(f"OpenCV {cv2.__version__} has no Caffe importer: needs "
                 "opencv-python-headless<5")
    cv2.setNumThreads(args.threads)
    import symnet as sn
    cch = corpus_helpers()

    columns = ["opencv"] + (["opencv_nowino"] if args.winograd_off else [])
    print(f"symnet cpu against OpenCV {cv2.__version__} dnn, {args.threads} threads each; "
          f"medians of {args.rounds} interleaved samples (each k forwards); load average "
          f"{load_text()} (1/5/15 min) at the start")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > cores:
        print(f"note: the load average is above the {cores} cores: other processes hold "
              "them, and the times include waiting for a core (more so with more threads)")
    skipped = [n for n in SKIPPED if n not in nets]
    if skipped:
        print("not measured: " + "; ".join(f"{n}: {SKIPPED[n]}" for n in skipped))
    head = f"{'net':<14} {'N':>3} {'symnet ms':>10}  {'OpenCV ms':>10} {'ratio':>6}"
    if args.winograd_off:
        head += f"  {'no-Wino ms':>10} {'ratio':>6}"
    print(head + "    k  max|diff| / max|OpenCV|")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in nets:
            for batch in batches:
                r = measure(name, batch, args, cv2, sn, cch, workdir)
                results.append(r)
                print_row(r, columns)
    for key in columns:
        for batch in batches:
            ratios = [r["ms"]["symnet"] / r["ms"][key] for r in results
                      if r["batch"] == batch]
            worst = max(ratios)
            print(f"{'OpenCV' if key == 'opencv' else 'OpenCV, Winograd off'}, batch "
                  f"{batch}: geometric mean ratio {geomean(ratios):.2f}, worst "
                  f"{worst:.2f}; {sum(x <= 0.8 for x in ratios)} of {len(ratios)} nets "
                  "<= 0.8 (target: all)")
    mismatches = [f"{r['net']} batch {r['batch']}" for r in results
                  for key in columns if r["diff"][key] > RTOL]
    print("outputs: " + (f"MISMATCH above {RTOL:g} in " + ", ".join(mismatches)
                         if mismatches else f"all within {RTOL:g} of OpenCV's"))
    print(f"load average {load_text()} at the end")
    if args.profile:
        for r in results:
            print_profile(r)


if __name__ == "__main__":
    main()
