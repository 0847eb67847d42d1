"""Helpers for the tests that run the prototxt corpus (tests/data/models, see
SOURCES.md): which files are deploy nets, train/test nets or solvers; the shapes that
stand in a train/test net's data layers; seeded random weights that keep deep nets'
activations of order one.

Imported by tests/caffe/test_net_corpus.py and tests/caffe/test_opencv_compare.py
(tests/caffe is not on pytest's ``pythonpath``; the test files add this folder).
"""
from __future__ import annotations

import math
import pathlib
import re

import numpy as np

from symnet.formats.prototxt import parse_net, parse_solver
from symnet.formats.upgrade import upgrade_net, upgrade_solver
from symnet.net import layer_included

MODELS = pathlib.Path(__file__).parents[1] / "data" / "models"
FILES = sorted(p.relative_to(MODELS).as_posix() for p in MODELS.rglob("*.prototxt"))

# Caffe's data layers (tops come from a source, not from bottoms).
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData"}

_SOLVER_FIELDS = re.compile(r"^\s*(base_lr|max_iter|lr_policy|solver_mode|net|train_net)"
                            r"\s*:", re.M)

# Per-image shapes of the datasets the corpus's data layers read, recognised from
# data_param.source (Caffe reads them from the LMDB; here they stand in).
_DATASETS = [
    (re.compile(r"siamese"), (2, 28, 28)),        # MNIST pairs, stacked as channels
    (re.compile(r"mnist"), (1, 28, 28)),
    (re.compile(r"cifar"), (3, 32, 32)),
    (re.compile(r"ilsvrc|imagenet"), (3, 256, 256)),
]


def read(name) -> str:
    return (MODELS / name).read_text()


def is_solver(name) -> bool:
    return bool(_SOLVER_FIELDS.search(read(name)))


def load_net_param(name):
    """The upgraded NetParameter of a corpus net file."""
    net, _ = upgrade_net(parse_net(MODELS / name))
    return net


def load_solver(name):
    solver, _ = upgrade_solver(parse_solver(MODELS / name))
    return solver


def is_train_net(param) -> bool:
    return any(lp.type in DATA_TYPES for lp in param.layer)


def kinds():
    """(deploy nets, train/test nets, solvers): corpus file names."""
    deploy, train, solvers = [], [], []
    for name in FILES:
        if is_solver(name):
            solvers.append(name)
        elif is_train_net(load_net_param(name)):
            train.append(name)
        else:
            deploy.append(name)
    return deploy, train, solvers


def solver_test_states(net_name):
    """The stage lists the corpus's solvers test ``net_name`` with (its
    ``test_state``s); ``[[]]`` when no solver names stages for it."""
    base = pathlib.PurePosixPath(net_name).name
    states = []
    for name in FILES:
        if not is_solver(name):
            continue
        solver = load_solver(name)
        nets = [solver.net, solver.train_net, *solver.test_net]
        if any(n and pathlib.PurePosixPath(n).name == base for n in nets):
            states += [list(s.stage) for s in solver.test_state]
    return states or [[]]


def declared_input_shapes(param):
    """{blob: shape} of a deploy net's Input layers (legacy ``input:`` declarations
    are Input layers after the upgrade)."""
    out = {}
    for lp in param.layer:
        if lp.type == "Input":
            shapes = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
            if len(shapes) == 1:
                shapes = shapes * len(lp.top)
            out.update(zip(lp.top, shapes))
    return out


# ------------------------------------------------------------ data layer stand-ins

def _dataset_shape(source, what):
    for pattern, shape in _DATASETS:
        if pattern.search(source):
            return shape
    raise ValueError(f"{what}: no known dataset for source '{source}'")


def _cropped(shape, transform):
    crop = transform.crop_size if transform.HasField("crop_size") else 0
    if crop:
        return shape[:-2] + (crop, crop)
    return shape


def data_layer_shapes(lp):
    """The top shapes of a data layer as Caffe would produce them: batch_size from its
    parameter, the image shape from its parameter or its dataset (after crop_size),
    labels of shape (N,)."""
    what = f"layer '{lp.name}' ({lp.type})"
    if lp.type == "DummyData":
        p = lp.dummy_data_param
        shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
        if not shapes:
            shapes = [tuple(int(v) for v in dims)
                      for dims in zip(p.num, p.channels, p.height, p.width)]
        if len(shapes) == 1:
            shapes = shapes * len(lp.top)
        return shapes
    if lp.type == "MemoryData":
        p = lp.memory_data_param
        image = (p.channels, p.height, p.width)
        n = p.batch_size
    elif lp.type == "ImageData":
        p = lp.image_data_param
        c = 3 if p.is_color else 1
        if p.new_height and p.new_width:
            image = (c, p.new_height, p.new_width)
        else:
            image = (c,) + _dataset_shape(p.source, what)[1:]
        image = _cropped(image, lp.transform_param)
        n = p.batch_size
    elif lp.type == "HDF5Data":
        n = lp.hdf5_data_param.batch_size
        image = _dataset_shape(lp.hdf5_data_param.source, what)
    elif lp.type == "Data":
        n = lp.data_param.batch_size
        image = _cropped(_dataset_shape(lp.data_param.source, what), lp.transform_param)
    else:
        raise ValueError(f"{what}: no stand-in for this data layer type")
    shapes = [(int(n),) + tuple(int(d) for d in image)]
    shapes += [(int(n),)] * (len(lp.top) - 1)     # labels: one per item
    return shapes


def stand_in_shapes(param, phase, stages=(), level=0):
    """input_shapes= for Net: every included data layer's tops."""
    out = {}
    for lp in param.layer:
        if lp.type in DATA_TYPES and layer_included(lp, phase, level, list(stages)):
            out.update(zip(lp.top, data_layer_shapes(lp)))
    return out


def stand_in_values(net, rng):
    """Values for a net's input blobs: images in [0, 1) and labels fit for the loss
    layers that read them (class indices below the classifier's width, or 0/1
    similarities and targets)."""
    values = {}
    classes = {}
    for layer in net._layers:
        if layer.type in ("SoftmaxWithLoss", "Accuracy") and len(layer.bottoms) > 1:
            classes[layer.bottoms[1]] = net.blobs[layer.bottoms[0]].shape[1]
        if layer.type == "ContrastiveLoss":
            classes[layer.bottoms[2]] = 2
    for name in net.inputs:
        shape = net.blobs[name].shape
        if name in classes:
            values[name] = rng.integers(0, classes[name], size=shape).astype(np.float32)
        else:
            values[name] = rng.random(shape, dtype=np.float32)
    return values


# ------------------------------------------------------------ random weights

def _conv_fan_in(layer, shape):
    if layer.type == "Deconvolution":
        # W is [C_in, out / group, kh, kw]: an output pixel sums over C_in / group
        # channels and about (k / stride)^2 taps of each.
        p = layer.source.convolution_param
        group = p.group or 1
        stride = list(p.stride) or [p.stride_h or 1, p.stride_w or 1]
        if len(stride) == 1:
            stride = stride * 2
        taps = math.prod(shape[2:]) / max(1, stride[0] * stride[1])
        return max(1.0, shape[0] / group * taps)
    return math.prod(shape[1:])


def randomize_params(net, seed=0):
    """Seeded random values for every parameter blob, of Caffe's order and shapes:

    - Convolution / Deconvolution / InnerProduct / Embed weights: N(0, 2 / fan_in)
      (He scaling, so ReLU chains keep their magnitude); biases N(0, 0.1^2);
    - BatchNorm: mean N(0, 0.1^2), variance U(0.5, 1.5), scale_factor 1;
    - Scale: factors U(0.8, 1.2), bias N(0, 0.1^2); Bias N(0, 0.1^2);
    - PReLU slopes U(0.05, 0.4);
    - anything else N(0, 0.1^2).

    Shared blobs (``param { name }``) get the value of their last layer."""
    rng = np.random.default_rng(seed)
    for layer in net._layers:
        for j, blob in enumerate(layer.blobs):
            shape = blob.shape
            if layer.type in ("Convolution", "Deconvolution", "InnerProduct", "Embed") \
                    and j == 0:
                if layer.type == "InnerProduct":
                    transpose = layer.source.inner_product_param.transpose
                    fan_in = shape[0] if transpose else math.prod(shape[1:])
                elif layer.type == "Embed":
                    fan_in = 1.0
                else:
                    fan_in = _conv_fan_in(layer, shape)
                value = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
            elif layer.type == "BatchNorm":
                value = [lambda: rng.normal(0.0, 0.1, shape),
                         lambda: rng.uniform(0.5, 1.5, shape),
                         lambda: np.ones(shape)][j]()
            elif layer.type == "Scale" and j == 0:
                value = rng.uniform(0.8, 1.2, shape)
            elif layer.type == "PReLU":
                value = rng.uniform(0.05, 0.4, shape)
            else:
                value = rng.normal(0.0, 0.1, shape)
            blob.data[...] = np.asarray(value, dtype=np.float32)


# ------------------------------------------------------------ net surgery

def without_in_place(param):
    """A copy of a NetParameter in which every layer writes fresh tops: a top that an
    earlier layer already produced (an in-place layer's, top == bottom) is renamed
    '<top>@<layer>' and the later bottoms follow. The net computes the same values,
    and every layer's output stays visible in net.blobs. Returns (param, names):
    names maps each layer name to its tops in the new net."""
    out = type(param)()
    out.CopyFrom(param)
    current, names = {}, {}
    for lp in out.layer:
        lp.bottom[:] = [current.get(b, b) for b in lp.bottom]
        tops = []
        for t in lp.top:
            new = f"{t}@{lp.name}" if t in current else t
            current[t] = new
            tops.append(new)
        lp.top[:] = tops
        names[lp.name] = tops
    return out, names


def copy_params(src, dst):
    """Copy every parameter blob of net src into the layer of the same name in dst."""
    for name, blobs in dst.params.items():
        for a, b in zip(src.params[name], blobs):
            b.data[...] = a.data


def calibrate_batch_norm(param, net, inputs, seed=0, backend="cpu"):
    """Give net's BatchNorm layers statistics near those of their inputs, so deep
    nets' activations stay of order one in TEST phase.

    A copy of the net whose BatchNorm layers use batch statistics (Caffe updates the
    stored sums then, whatever the phase) runs forward once on ``inputs`` from zeroed
    sums; the sums it stores (mean, unbiased variance, scale_factor 1) are perturbed
    (mean by 0.1 std, variance by a factor in [0.8, 1.25]) and scaled by a random
    scale_factor in [0.5, 2] (the stored sums are divided by it), then set in net."""
    from symnet.net import Net, TEST
    calib = type(param)()
    calib.CopyFrom(param)
    bn_layers = [lp.name for lp in calib.layer if lp.type == "BatchNorm"]
    if not bn_layers:
        return
    for lp in calib.layer:
        if lp.type == "BatchNorm":
            lp.batch_norm_param.use_global_stats = False
    shapes = {b: net.blobs[b].shape for b in net.inputs}
    cnet = Net(calib, TEST, backend=backend, input_shapes=shapes)
    copy_params(net, cnet)
    for name in bn_layers:
        for b in cnet.params[name]:
            b.data[...] = 0
    cnet.forward(**inputs)
    rng = np.random.default_rng(seed)
    for name in bn_layers:
        mean, var, factor = (b.data.copy() for b in cnet.params[name])
        assert np.allclose(factor, 1.0), (name, factor)
        std = np.sqrt(np.maximum(var, 1e-6))
        mean = mean + rng.normal(0.0, 0.1, mean.shape) * std
        var = var * rng.uniform(0.8, 1.25, var.shape)
        s = rng.uniform(0.5, 2.0)
        for b, v in zip(net.params[name], (mean * s, var * s, np.full(factor.shape, s))):
            b.data[...] = v


# ------------------------------------------------------------ Python layer module

# examples/pycaffe/layers/pyloss.py of BVLC Caffe (the module linreg.prototxt's Python
# layer names), restated: Caffe's EuclideanLossLayer as a Python layer.
PYLOSS_SOURCE = """\
import caffe
import numpy as np


class EuclideanLossLayer(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num
"""
