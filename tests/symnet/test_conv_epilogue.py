"""GEMM epilogues on the cpu backend: the elementwise work after a convolution or an
InnerProduct (bias, TEST-phase BatchNorm with global statistics, Scale, ReLU, a
residual Eltwise sum then ReLU) applied inside the GEMM's kernel. Every blob of the
nets against the numpy backend (batch 1 and 3, odd channel counts, 3x3 and 1x1
kernels, 1 and 2 threads), the plan without a separate elementwise pass over those
outputs, and training (forward_backward) still matching the reference."""
import numpy as np
import pytest

import symnet as sn
from symnet.codegen import lower

R = np.random.default_rng(15)

CONV_BN = """
name: "conv_bn"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: {o} kernel_size: {k} pad: {p} stride: {s}
                            bias_term: {bias} group: {g} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "conv" top: "conv"
        batch_norm_param {{ use_global_stats: true eps: 1e-3 }} }}
layer {{ name: "scale" type: "Scale" bottom: "conv" top: "conv"
        scale_param {{ bias_term: true }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
"""

RESIDUAL = """
name: "residual"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }} }} }}
layer {{ name: "a" type: "Convolution" bottom: "data" top: "a"
        convolution_param {{ num_output: {o} kernel_size: 1 stride: {s} bias_term: false }} }}
layer {{ name: "a_bn" type: "BatchNorm" bottom: "a" top: "a"
        batch_norm_param {{ use_global_stats: true }} }}
layer {{ name: "a_scale" type: "Scale" bottom: "a" top: "a" scale_param {{ bias_term: true }} }}
layer {{ name: "b" type: "Convolution" bottom: "data" top: "b"
        convolution_param {{ num_output: {o} kernel_size: 3 pad: 1 stride: {s}
                            bias_term: false }} }}
layer {{ name: "b_bn" type: "BatchNorm" bottom: "b" top: "b"
        batch_norm_param {{ use_global_stats: true }} }}
layer {{ name: "b_scale" type: "Scale" bottom: "b" top: "b" scale_param {{ bias_term: true }} }}
layer {{ name: "b_relu" type: "ReLU" bottom: "b" top: "b" }}
layer {{ name: "c" type: "Convolution" bottom: "b" top: "c"
        convolution_param {{ num_output: {o} kernel_size: 3 pad: 1 bias_term: false }} }}
layer {{ name: "c_bn" type: "BatchNorm" bottom: "c" top: "c"
        batch_norm_param {{ use_global_stats: true }} }}
layer {{ name: "c_scale" type: "Scale" bottom: "c" top: "c" scale_param {{ bias_term: true }} }}
layer {{ name: "sum" type: "Eltwise" bottom: "a" bottom: "c" top: "sum" }}
layer {{ name: "sum_relu" type: "ReLU" bottom: "sum" top: "sum" }}
layer {{ name: "d" type: "Convolution" bottom: "sum" top: "d"
        convolution_param {{ num_output: {o} kernel_size: 3 pad: 1 }} }}
layer {{ name: "sum2" type: "Eltwise" bottom: "d" bottom: "sum" top: "sum2" }}
layer {{ name: "sum2_relu" type: "ReLU" bottom: "sum2" top: "sum2" }}
"""

IP = """
name: "ip"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: {n} dim: {c} dim: 3 dim: 2 }} }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param {{ num_output: {o} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "fc" top: "fc" }}
layer {{ name: "fc2" type: "InnerProduct" bottom: "fc" top: "fc2"
        inner_product_param {{ num_output: 7 }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "fc2" top: "relu2" }}
"""


def _randomise(ref, net):
    """Seeded params shared by both nets: filters He-scaled with either sign, biases
    and Scale's beta of either sign, BatchNorm means of either sign, variances and
    gammas positive, the moving-average factor positive and not 1."""
    for name, blobs in ref.params.items():
        for i, (a, b) in enumerate(zip(blobs, net.params[name])):
            shape = a.data.shape
            if a.data.ndim > 1:
                v = R.standard_normal(shape) * np.sqrt(2.0 / a.data[0].size)
            elif a.data.size == 1:          # BatchNorm's factor
                v = R.uniform(0.5, 2.0, shape)
            elif name.endswith("bn") and i == 1:        # variances
                v = R.uniform(0.2, 2.0, shape)
            elif name.endswith("scale") and i == 0:     # gamma
                v = R.uniform(0.5, 1.5, shape)
            else:
                v = R.standard_normal(shape)
            a.data[...] = v.astype(np.float32)
            b.data[...] = a.data


def _compare(text, phase=sn.TEST):
    ref = sn.Net(text, phase, backend="numpy")
    net = sn.Net(text, phase, backend="cpu")
    _randomise(ref, net)
    data = R.standard_normal(ref.blobs["data"].data.shape).astype(np.float32)
    ref.blobs["data"].data[...] = data
    net.blobs["data"].data[...] = data
    ref.forward()
    net.forward()
    for name in ref.blobs:
        want, got = ref.blobs[name].data, net.blobs[name].data
        assert np.isfinite(want).all(), name
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * scale, err_msg=name)
    return net


def _plan(net):
    fwd, _ = net.functions()
    return fwd.plan


def _passes_over(plan, size):
    """Generated elementwise kernels (not library kernels) writing at least ``size``
    values: passes over a GEMM's output. Param-derived steps (``plan.derived``: a
    BatchNorm folded into the weights, computed from params only and not at every
    call) never read a GEMM's output and are not counted."""
    derived = {i for steps, _ in plan.derived for i in steps}
    return [s for i, s in enumerate(plan.steps) if s.kind == "kernel"
            and not s.name.startswith("sn_") and s.bytes_written >= 4 * size
            and i not in derived]


def _epilogue_steps(plan):
    return [s for s in plan.steps if "epilogue applied" in s.boundary]


@pytest.fixture(params=[1, 2], ids=["t1", "t2"])
def threads(request, monkeypatch):
    monkeypatch.setenv("SYMNET_NUM_THREADS", str(request.param))
    return request.param


# (batch, channels, height, width, outputs, kernel, pad, stride, bias, group)
CONV_CASES = [
    (1, 3, 9, 7, 5, 3, 1, 1, "true", 1),
    (3, 3, 9, 7, 5, 3, 1, 1, "true", 1),
    (1, 5, 6, 6, 7, 1, 0, 1, "false", 1),
    (3, 5, 6, 6, 7, 1, 0, 1, "true", 1),
    (3, 7, 11, 10, 9, 3, 0, 2, "true", 1),
    (1, 4, 5, 9, 33, 3, 1, 2, "false", 1),
    (1, 3, 12, 11, 20, 1, 0, 1, "true", 1),     # 1x1: a GEMM of 132 columns
    (3, 3, 12, 11, 5, 3, 1, 1, "true", 1),
    (3, 10, 7, 7, 30, 3, 1, 1, "true", 2),      # grouped, wide groups: GEMMs per group
    (2, 3, 1, 1, 11, 1, 0, 1, "true", 1),       # 1x1 planes
    (3, 6, 7, 9, 6, 3, 1, 1, "true", 6),        # depthwise: the direct kernel
    (1, 9, 8, 7, 9, 3, 1, 2, "false", 9),
    (1, 6, 5, 5, 12, 3, 1, 1, "true", 3),       # 2 in, 4 out per group: direct
]


@pytest.mark.parametrize("n, c, h, w, o, k, p, s, bias, g", CONV_CASES)
def test_conv_bn_scale_relu(threads, n, c, h, w, o, k, p, s, bias, g):
    net = _compare(CONV_BN.format(n=n, c=c, h=h, w=w, o=o, k=k, p=p, s=s, bias=bias, g=g))
    plan = _plan(net)
    size = net.blobs["conv"].data.size
    assert _epilogue_steps(plan)
    assert not _passes_over(plan, size), [s.name for s in _passes_over(plan, size)]


@pytest.mark.parametrize("n, c, h, w, o, s", [(1, 3, 8, 8, 5, 1), (3, 5, 9, 7, 5, 2),
                                              (3, 4, 6, 5, 13, 1)])
def test_residual_sum_relu(threads, n, c, h, w, o, s):
    net = _compare(RESIDUAL.format(n=n, c=c, h=h, w=w, o=o, s=s))
    plan = _plan(net)
    size = net.blobs["sum"].data.size
    assert len(_epilogue_steps(plan)) >= 3
    assert not _passes_over(plan, size), [s.name for s in _passes_over(plan, size)]


@pytest.mark.parametrize("n, c, o", [(1, 3, 5), (3, 5, 17), (10, 3, 33)])
def test_inner_product_bias_relu(threads, n, c, o):
    net = _compare(IP.format(n=n, c=c, o=o))
    plan = _plan(net)
    assert len(_epilogue_steps(plan)) == 2
    assert not _passes_over(plan, n * 7)


def test_switch_off_keeps_separate_pass(monkeypatch):
    """With the epilogues off the elementwise chain is a pass of its own (what the
    plan check above would catch), with the same results."""
    monkeypatch.setattr(lower, "GEMM_EPILOGUES", False)
    net = _compare(CONV_BN.format(n=3, c=3, h=9, w=7, o=5, k=3, p=1, s=1, bias="true", g=1))
    plan = _plan(net)
    assert not _epilogue_steps(plan)
    assert _passes_over(plan, net.blobs["conv"].data.size)


TRAIN = """
name: "train"
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: {n} dim: 3 dim: 6 dim: 5 }} shape {{ dim: {n} }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 5 kernel_size: 3 pad: 1 }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "conv2" type: "Convolution" bottom: "conv" top: "conv2"
        convolution_param {{ num_output: 5 kernel_size: 1 }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "conv2" top: "conv2" }}
layer {{ name: "scale" type: "Scale" bottom: "conv2" top: "conv2"
        scale_param {{ bias_term: true }} }}
layer {{ name: "sum" type: "Eltwise" bottom: "conv" bottom: "conv2" top: "sum" }}
layer {{ name: "relu2" type: "ReLU" bottom: "sum" top: "sum" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "sum" top: "fc"
        inner_product_param {{ num_output: 4 }} }}
layer {{ name: "fc_relu" type: "ReLU" bottom: "fc" top: "fc" }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"""


@pytest.mark.parametrize("n", [1, 3])
def test_train_forward_backward(threads, n):
    """TRAIN (BatchNorm on batch statistics, backward reading the forward's values):
    every blob and every param diff against the numpy backend."""
    text = TRAIN.format(n=n)
    ref = sn.Net(text, sn.TRAIN, backend="numpy")
    net = sn.Net(text, sn.TRAIN, backend="cpu")
    _randomise(ref, net)
    data = R.standard_normal((n, 3, 6, 5)).astype(np.float32)
    label = R.integers(0, 4, n).astype(np.float32)
    for m in (ref, net):
        m.blobs["data"].data[...] = data
        m.blobs["label"].data[...] = label
        m.clear_param_diffs()
        m.forward_backward()
    for name in ref.blobs:
        want, got = ref.blobs[name].data, net.blobs[name].data
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
    for name, blobs in ref.params.items():
        for i, (a, b) in enumerate(zip(blobs, net.params[name])):
            scale = max(1.0, float(np.abs(a.diff).max()))
            np.testing.assert_allclose(b.diff, a.diff, rtol=1e-3, atol=1e-5 * scale,
                                       err_msg=f"{name}[{i}]")


def test_large_multi_value_epilogue_stays_separate(monkeypatch):
    """An epilogue storing several values totalling more than EPILOGUE_MAX_BYTES stays
    a pass of its own; one storing a single value (the final ReLU of a chain whose
    other versions nothing reads) is still applied."""
    monkeypatch.setattr(lower, "EPILOGUE_MAX_BYTES", 1024)
    # force_backward keeps every version of the in-place chain (backward reads them)
    net = _compare("force_backward: true\n" +
                   CONV_BN.format(n=3, c=3, h=9, w=7, o=5, k=3, p=1, s=1, bias="true", g=1))
    plan = _plan(net)
    assert not _epilogue_steps(plan)
    assert _passes_over(plan, net.blobs["conv"].data.size)
    with sn.graph_scope():
        x = sn.input("x", (2, 3, 6, 6))
        w = sn.param("w", (4, 3, 3, 3), value=R.standard_normal((4, 3, 3, 3)).astype(np.float32))
        b = sn.param("b", (1, 4, 1, 1), value=R.standard_normal((1, 4, 1, 1)).astype(np.float32))
        y = sn.maximum(sn.conv2d(x, w, pad=1) + b, 0.0)
        fn = sn.function([x], y, backend="cpu")
        ref = sn.function([x], y, backend="numpy")
        xv = R.standard_normal((2, 3, 6, 6)).astype(np.float32)
        np.testing.assert_allclose(fn(xv), ref(xv), rtol=1e-5, atol=1e-5)
        assert _epilogue_steps(fn.plan) and not _passes_over(fn.plan, 2 * 4 * 36)


def test_a_forward_only_net_stores_each_blob_once():
    """With no backward to follow (no loss, no force_backward), a whole-net forward
    stores only each blob's last version, as Caffe's one memory per blob: the in-place
    BatchNorm, Scale and ReLU after a convolution leave one full-size store, made by
    the GEMM's epilogue; with force_backward every version is kept."""
    text = CONV_BN.format(n=2, c=3, h=9, w=7, o=5, k=3, p=1, s=1, bias="true", g=1)
    net = _compare(text)
    size = net.blobs["conv"].data.size
    plan = _plan(net)
    assert _epilogue_steps(plan) and not _passes_over(plan, size)
    assert sum(1 for bid, shape in plan.outputs if np.prod(shape) == size) == 1
    kept = _plan(_compare("force_backward: true\n" + text))
    assert sum(1 for bid, shape in kept.outputs if np.prod(shape) == size) > 1
