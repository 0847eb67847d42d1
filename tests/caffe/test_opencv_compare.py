"""Cross-check with an independent Caffe implementation: OpenCV's Caffe importer.

For each net: symnet builds it from the corpus prototxt, gets seeded random weights
(He-scaled; BatchNorm statistics calibrated on the input so activations stay of order
one, with a random scale_factor), runs forward on ``cpu`` and writes a .caffemodel with
``net.save``; OpenCV reads the same prototxt with that .caffemodel
(``cv2.dnn.readNetFromCaffe``), gets the same input and reports the output of every
layer. OpenCV's output of layer L is the first top of L as Caffe computes it:

- it is compared with a symnet net built without in-place layers (each in-place top
  renamed, see ``without_in_place``), where every layer's output is a blob, so every
  layer OpenCV reports is checked;
- and, when L is the last layer writing that blob, with the blob of the net built
  from the file as it is (in-place chains, e.g. Convolution -> BatchNorm -> Scale ->
  ReLU on one blob, hold the last value there).

Tolerance per blob: max|symnet - opencv| <= rtol * max|opencv| + 1e-5, rtol 1e-4, 1e-3
for the deep BatchNorm nets (ResNet-50, MobileNet v1/v2): there both implementations
are about 1e-4 from a float64 evaluation at the last stages (measured on ResNet-50:
symnet 1.1e-4, OpenCV 1.2e-4), as normalising channels whose spread is small next to
their mean amplifies float32 rounding. OpenCV's Winograd convolution is turned off: it
is the less accurate of its convolutions (5e-4 from float64 on ResNet-50).

Notes from OpenCV's importer: it ignores include { phase } (deploy nets have none)
and reports only a layer's first output (Slice in det4).
"""
import pathlib
import sys
from dataclasses import dataclass

import numpy as np
import pytest

try:
    import cv2
except ImportError:
    pytest.skip("needs opencv-python-headless<5 (pip install 'symnet[dev]')",
                allow_module_level=True)
if not hasattr(getattr(cv2, "dnn", None), "readNetFromCaffe"):
    pytest.skip(f"OpenCV {cv2.__version__} has no Caffe importer "
                "(cv2.dnn.readNetFromCaffe; OpenCV 5 dropped it): needs "
                "opencv-python-headless<5 (pip install 'symnet[dev]')",
                allow_module_level=True)

import symnet as sn  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))   # tests/caffe helpers
import caffe_corpus_help as cch  # noqa: E402

BACKEND = "cpu"
ATOL = 1e-5


@dataclass
class Case:
    file: str
    batch: int = 1
    spatial: tuple = None          # (H, W) instead of the declared size
    rtol: float = 1e-4
    slow: bool = False

    @property
    def id(self):
        return self.file.replace("/deploy.prototxt", "").replace(".prototxt", "")


CASES = [
    Case("bvlc_mnist/lenet.prototxt", batch=2),
    Case("mnist_input_shape/lenet.prototxt", batch=2),        # input: + input_shape
    Case("mnist_v1/lenet.prototxt", batch=2),                 # V1, input: + input_dim
    Case("bvlc_cifar10/cifar10_quick.prototxt", batch=2),
    Case("cifar10_v1/cifar10_quick.prototxt", batch=2),       # V1
    Case("bvlc_cifar10/cifar10_full.prototxt", batch=2),      # LRN WITHIN_CHANNEL
    Case("mtcnn/det1.prototxt", batch=2, spatial=(41, 53)),   # P-Net on an odd-sized image
    Case("mtcnn/det2.prototxt", batch=2),
    Case("mtcnn/det4.prototxt", batch=2),                     # Slice into 5 branches
    Case("squeezenet_v1.1/deploy.prototxt"),
    Case("mobilenet/mobilenet_deploy.prototxt", rtol=1e-3),
    Case("mobilenet/mobilenet_v2_deploy.prototxt", rtol=1e-3),
    Case("bvlc_caffenet/deploy.prototxt", slow=True),
    Case("caffenet_v1/deploy.prototxt", slow=True),           # V1
    Case("bvlc_alexnet/deploy.prototxt", slow=True),
    Case("bvlc_googlenet/deploy.prototxt", slow=True),
    Case("resnet/ResNet-50-deploy.prototxt", rtol=1e-3, slow=True),
    # Deconvolution and Crop; smaller than the declared 500 x 500 (pad 100 takes any size)
    Case("fcn_voc8s/deploy.prototxt", spatial=(128, 160), slow=True),
]


def _case_params():
    return [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
            for c in CASES]


def _input_shapes(case, param):
    out = {}
    for blob, shape in cch.declared_input_shapes(param).items():
        spatial = case.spatial or shape[2:]
        out[blob] = (case.batch, shape[1]) + tuple(spatial)
    return out


def _opencv_outputs(prototxt, caffemodel, inputs):
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)
    for name, array in inputs.items():
        net.setInput(array, name)
    names = list(net.getLayerNames())
    outs = net.forward(names)
    return dict(zip(names, outs))


def _mismatch(got, ref, rtol):
    """None if got matches ref within the tolerance, else a description."""
    if got.shape != ref.shape:
        return f"shape {got.shape}, OpenCV {ref.shape}"
    if not np.isfinite(got).all():
        return "not finite"
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    if err > rtol * scale + ATOL:
        return f"max|diff| {err:.3g} > {rtol:g} * {scale:.3g} + {ATOL:g}"
    return None


@pytest.mark.parametrize("case", _case_params())
def test_matches_opencv(case, tmp_path):
    path = cch.MODELS / case.file
    param = cch.load_net_param(case.file)
    shapes = _input_shapes(case, param)

    net = sn.Net(path, sn.TEST, backend=BACKEND, input_shapes=shapes)
    cch.randomize_params(net, seed=0)
    rng = np.random.default_rng(1)
    inputs = {b: rng.standard_normal(s).astype(np.float32) for b, s in shapes.items()}
    cch.calibrate_batch_norm(param, net, inputs, seed=2, backend=BACKEND)
    outputs = net.forward(**inputs)

    flat_param, tops = cch.without_in_place(param)
    flat = sn.Net(flat_param, sn.TEST, backend=BACKEND, input_shapes=shapes)
    cch.copy_params(net, flat)
    flat.forward(**inputs)

    caffemodel = tmp_path / "random.caffemodel"
    net.save(caffemodel)
    ref = _opencv_outputs(path, caffemodel, inputs)

    layers = [l for l in net._layers if l.type != "Input"]
    assert set(ref) == {l.name for l in layers}, "OpenCV reports other layers than the file"
    last_writer = {}
    for layer in net._layers:
        for t in layer.tops:
            last_writer[t] = layer.name

    failures, checks, finals = [], 0, set()
    for layer in layers:
        expected = ref[layer.name]
        what = f"layer '{layer.name}' ({layer.type})"
        problem = _mismatch(flat.blobs[tops[layer.name][0]].data, expected, case.rtol)
        if problem:
            failures.append(f"{what} top '{layer.tops[0]}': {problem}")
        checks += 1
        top = layer.tops[0]
        if last_writer[top] == layer.name:
            finals.add(top)
            problem = _mismatch(net.blobs[top].data, expected, case.rtol)
            checks += 1
            if problem:
                failures.append(f"{what} blob '{top}' of the in-place net: {problem}")
    assert not failures, (f"{case.file}: {len(failures)} of {checks} blobs differ from "
                          "OpenCV:\n  " + "\n  ".join(failures[:20]))
    # every output of the net was among the blobs compared
    assert set(outputs) <= finals
    assert checks == len(layers) + len(finals)


def test_in_place_rename_keeps_the_net():
    """without_in_place renames only tops an earlier layer produced, and later layers
    read the renamed blob (the comparison above relies on it)."""
    param = cch.load_net_param("resnet/ResNet-50-deploy.prototxt")
    flat, tops = cch.without_in_place(param)
    produced = set()
    for lp in flat.layer:
        assert all(b in produced for b in lp.bottom), lp.name
        assert not set(lp.top) & produced, lp.name
        produced.update(lp.top)
    assert tops["bn_conv1"] == ["conv1@bn_conv1"]
    assert tops["conv1_relu"] == ["conv1@conv1_relu"]
    pool1 = next(lp for lp in flat.layer if lp.name == "pool1")
    assert list(pool1.bottom) == ["conv1@conv1_relu"]
