"""The prototxt corpus (tests/data/models, SOURCES.md) as nets on the cpu backend.

- every deploy net builds and runs forward with seeded random weights (He-scaled, so
  deep nets stay finite), at its declared input shape (batch 1 when the declared input
  holds more than a million values); every blob finite, outputs of Caffe's shapes;
- every train/test net builds in TRAIN and in TEST (in TEST with each stage list its
  solver tests it with), its data layers stood in by ``input_shapes=`` of the shapes
  Caffe's data layers would produce (batch_size of the layer, crop_size or the dataset's
  image size, labels (N,));
- the small train/test nets run forward + backward in TRAIN (finite loss and
  parameter diffs, a step along the gradient lowers the loss) and forward in TEST;
- every solver parses; the consolidated solver's inline V1 net builds.

The first forward of a net compiles it (cached in SYMNET_CACHE_DIR); build and first
forward times are recorded per net (``record_property``) and listed after the module.
"""
import math
import pathlib
import sys
import time

import numpy as np
import pytest

import symnet as sn
from symnet.formats.prototxt import parse_solver
from symnet.formats.upgrade import upgrade_solver

sys.path.insert(0, str(pathlib.Path(__file__).parent))   # tests/caffe helpers
import caffe_corpus_help as cch  # noqa: E402

BACKEND = "cpu"
MODELS = cch.MODELS
DEPLOY, TRAIN_NETS, SOLVERS = cch.kinds()
BIG_INPUT = 1_000_000        # values in a declared input above which batch 1 is used
PHASES = {"TRAIN": sn.TRAIN, "TEST": sn.TEST}

# ImageNet-size nets: marked slow (CI still runs them).
SLOW = {
    "bvlc_alexnet/deploy.prototxt", "bvlc_caffenet/deploy.prototxt",
    "caffenet_v1/deploy.prototxt", "bvlc_googlenet/deploy.prototxt",
    "resnet/ResNet-50-deploy.prototxt", "fcn_voc8s/deploy.prototxt",
    "bvlc_caffenet/train_val.prototxt",
}

# Caffe's output blobs of each deploy net: shape after the batch axis.
DEPLOY_OUTPUTS = {
    "bvlc_alexnet/deploy.prototxt": {"prob": (1000,)},
    "bvlc_caffenet/deploy.prototxt": {"prob": (1000,)},
    "caffenet_v1/deploy.prototxt": {"prob": (1000,)},
    "bvlc_cifar10/cifar10_full.prototxt": {"prob": (10,)},
    "bvlc_cifar10/cifar10_quick.prototxt": {"prob": (10,)},
    "cifar10_v1/cifar10_quick.prototxt": {"prob": (10,)},
    "bvlc_googlenet/deploy.prototxt": {"prob": (1000,)},
    "bvlc_mnist/lenet.prototxt": {"prob": (10,)},
    "mnist_input_shape/lenet.prototxt": {"prob": (10,)},
    "mnist_v1/lenet.prototxt": {"prob": (10,)},
    "bvlc_siamese/mnist_siamese.prototxt": {"feat": (2,)},
    "fcn_voc8s/deploy.prototxt": {"score": (21, 500, 500)},
    "mobilenet/mobilenet_deploy.prototxt": {"prob": (1000, 1, 1)},
    "mobilenet/mobilenet_v2_deploy.prototxt": {"prob": (1000, 1, 1)},
    "mtcnn/det1.prototxt": {"conv4-2": (4, 1, 1), "prob1": (2, 1, 1)},
    "mtcnn/det2.prototxt": {"conv5-2": (4,), "prob1": (2,)},
    "mtcnn/det4.prototxt": {f"fc5_{i}": (2,) for i in range(1, 6)},
    "resnet/ResNet-50-deploy.prototxt": {"prob": (1000,)},
    "squeezenet_v1.1/deploy.prototxt": {"prob": (1000, 1, 1)},
}

# Output blobs of the train/test nets: (TRAIN, TEST). Accuracy layers are TEST only.
TRAIN_OUTPUTS = {
    "bvlc_caffenet/train_val.prototxt": (["loss"], ["accuracy", "loss"]),
    "bvlc_cifar10/cifar10_full_sigmoid_train_test_bn.prototxt": (["loss"],
                                                                 ["accuracy", "loss"]),
    "bvlc_cifar10/cifar10_full_train_test.prototxt": (["loss"], ["accuracy", "loss"]),
    "bvlc_cifar10/cifar10_quick_train_test.prototxt": (["loss"], ["accuracy", "loss"]),
    "bvlc_mnist/lenet_train_test.prototxt": (["loss"], ["accuracy", "loss"]),
    "mnist_v1/lenet_train_test.prototxt": (["loss"], ["accuracy", "loss"]),
    "bvlc_mnist/mnist_autoencoder.prototxt": (["cross_entropy_loss", "l2_error"],
                                              ["cross_entropy_loss", "l2_error"]),
    "bvlc_pycaffe/linreg.prototxt": (["loss"], ["loss"]),
    "bvlc_siamese/mnist_siamese_train_test.prototxt": (["loss"], ["loss"]),
}

# Train/test nets run forward + backward (TRAIN) and forward (TEST) here.
RUN_TRAIN = [
    "bvlc_mnist/lenet_train_test.prototxt",
    "mnist_v1/lenet_train_test.prototxt",
    "bvlc_cifar10/cifar10_quick_train_test.prototxt",
    "bvlc_siamese/mnist_siamese_train_test.prototxt",
    "bvlc_mnist/mnist_autoencoder.prototxt",
    "bvlc_pycaffe/linreg.prototxt",
    "bvlc_cifar10/cifar10_full_sigmoid_train_test_bn.prototxt",   # BatchNorm training
    pytest.param("bvlc_cifar10/cifar10_full_train_test.prototxt", marks=pytest.mark.slow),
]


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@pytest.fixture(scope="module")
def timings(request):
    """Rows (net, what, seconds); listed after the module's tests."""
    rows = []
    yield rows
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capman is None or not rows:
        return
    with capman.global_and_fixture_disabled():
        tr.write_line("")
        tr.write_line(f"corpus nets on {BACKEND} (first forward includes the compile, "
                      "cached in SYMNET_CACHE_DIR):")
        for name, what, seconds in rows:
            tr.write_line(f"  {seconds:7.2f} s  {what:<28} {name}")
        tr.write_line(f"  {sum(r[2] for r in rows):7.2f} s  total")


@pytest.fixture
def timed(timings, record_property):
    def run(name, what, fn, *args, **kwargs):
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        timings.append((name, what, seconds))
        record_property(what.replace(" ", "_") + "_s", round(seconds, 3))
        return result
    return run


@pytest.fixture
def pyloss_path(tmp_path, monkeypatch):
    """The ``pyloss`` module linreg.prototxt's Python layer imports, on sys.path."""
    (tmp_path / "pyloss.py").write_text(cch.PYLOSS_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pyloss", raising=False)
    return tmp_path


def _build(path, phase, **kwargs):
    return sn.Net(path, phase, backend=BACKEND, **kwargs)


def _assert_all_finite(net, what):
    bad = [f"{b} (max |x| {np.nanmax(np.abs(blob.data)) if blob.data.size else 0:.3g})"
           for b, blob in net.blobs.items() if not np.isfinite(blob.data).all()]
    assert not bad, f"{what}: blobs with NaN or inf: {', '.join(bad)}"


# ------------------------------------------------------------------ the corpus

def test_corpus_classified():
    """The tables here cover the whole corpus: a new file must be added to them."""
    assert len(DEPLOY) + len(TRAIN_NETS) + len(SOLVERS) == len(cch.FILES) == 34
    assert set(DEPLOY) == set(DEPLOY_OUTPUTS)
    assert set(TRAIN_NETS) == set(TRAIN_OUTPUTS)
    assert len(SOLVERS) == 6


# ------------------------------------------------------------------ deploy nets

@pytest.mark.parametrize("name", _params(DEPLOY))
def test_deploy_net_forward(name, timed):
    param = cch.load_net_param(name)
    declared = cch.declared_input_shapes(param)
    assert declared, f"{name}: no Input layer"
    shapes = {b: ((1,) + s[1:] if math.prod(s) > BIG_INPUT else s)
              for b, s in declared.items()}
    net = timed(name, "build", sn.Net, MODELS / name, sn.TEST, backend=BACKEND,
                input_shapes=shapes)
    assert {b: net.blobs[b].shape for b in net.inputs} == shapes
    cch.randomize_params(net, seed=0)
    rng = np.random.default_rng(1)
    inputs = {b: rng.random(s, dtype=np.float32) for b, s in shapes.items()}
    out = timed(name, "first forward", net.forward, **inputs)

    batch = next(iter(shapes.values()))[0]
    expected = {b: (batch,) + s for b, s in DEPLOY_OUTPUTS[name].items()}
    assert {b: v.shape for b, v in out.items()} == expected
    _assert_all_finite(net, name)
    for b, v in out.items():
        assert np.ptp(v) > 0, f"{name}: output '{b}' is constant ({v.flat[0]})"
    for layer in net._layers:
        if layer.type == "Softmax":
            p = net.blobs[layer.tops[0]].data
            np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5,
                                       err_msg=f"{name}: softmax '{layer.name}'")


# ------------------------------------------------------------------ train/test nets

@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("name", _params(TRAIN_NETS))
def test_train_net_builds(name, phase, timed, request):
    if name == "bvlc_pycaffe/linreg.prototxt":
        request.getfixturevalue("pyloss_path")
    param = cch.load_net_param(name)
    states = [[]] if phase == "TRAIN" else cch.solver_test_states(name)
    for stages in states:
        shapes = cch.stand_in_shapes(param, PHASES[phase], stages)
        assert shapes, f"{name} {phase} {stages}: no data layer included"
        what = f"build {phase} {'+'.join(stages)}".rstrip()
        net = timed(name, what, _build, MODELS / name, PHASES[phase], stages=stages,
                    input_shapes=shapes)
        assert {b: net.blobs[b].shape for b in net.inputs} == shapes
        assert net.outputs == TRAIN_OUTPUTS[name][phase == "TEST"]
        assert any(w for layer in net._layers for w in layer.loss_weights)


def _weighted_loss(net):
    return sum(w * float(net.blobs[t].data.sum())
               for layer in net._layers for t, w in zip(layer.tops, layer.loss_weights) if w)


@pytest.mark.parametrize("name", RUN_TRAIN)
def test_small_train_net_forward_backward(name, timed, request):
    if name == "bvlc_pycaffe/linreg.prototxt":
        request.getfixturevalue("pyloss_path")
    param = cch.load_net_param(name)
    shapes = cch.stand_in_shapes(param, sn.TRAIN)
    net = _build(MODELS / name, sn.TRAIN, input_shapes=shapes)
    cch.randomize_params(net, seed=0)
    inputs = cch.stand_in_values(net, np.random.default_rng(2))
    timed(name, "first forward TRAIN", net.forward, **inputs)
    _assert_all_finite(net, f"{name} TRAIN forward")
    loss = _weighted_loss(net)
    assert math.isfinite(loss) and loss > 0

    net.clear_param_diffs()
    timed(name, "first backward TRAIN", net.backward)
    learned, g2 = 0, 0.0
    for layer in net._layers:
        if not any(layer.lr_mult):
            continue
        learned += 1
        diffs = [b.diff for b in layer.blobs]
        assert all(np.isfinite(d).all() for d in diffs), f"{name}: '{layer.name}' diffs"
        # (a siamese net's shared biases may cancel: one diff of the layer is enough)
        assert any(np.any(d) for d in diffs), f"{name}: '{layer.name}' has no gradient"
        g2 += sum(float(np.sum(d.astype(np.float64) ** 2)) for d in diffs)
    assert learned > 0 and g2 > 0

    # a small step against the gradient (first-order decrease 1% of the loss) lowers it
    lr = 0.01 * loss / g2
    seen = set()
    for layer in net._layers:
        for blob, mult in zip(layer.blobs, layer.lr_mult):
            if mult and id(blob) not in seen:
                seen.add(id(blob))
                blob.data[...] -= (lr * mult * blob.diff).astype(np.float32)
    net.forward(**inputs)
    assert _weighted_loss(net) < loss

    # the TEST phase runs too (with the first stage list its solver tests it with; at
    # most 100 items: cifar10_full_sigmoid's TEST batch of 1000 is built above)
    stages = cch.solver_test_states(name)[0]
    test_shapes = {b: (min(s[0], 100),) + s[1:]
                   for b, s in cch.stand_in_shapes(param, sn.TEST, stages).items()}
    tnet = _build(MODELS / name, sn.TEST, stages=stages, input_shapes=test_shapes)
    cch.randomize_params(tnet, seed=0)
    out = timed(name, "first forward TEST", tnet.forward,
                **cch.stand_in_values(tnet, np.random.default_rng(3)))
    _assert_all_finite(tnet, f"{name} TEST forward")
    if "accuracy" in out:
        assert 0.0 <= float(out["accuracy"].item()) <= 1.0


def test_linreg_python_loss_matches_numpy(pyloss_path):
    """linreg.prototxt's Python loss layer (Caffe's pyloss) runs unmodified: its loss
    and the diffs it sends back equal the closed form."""
    name = "bvlc_pycaffe/linreg.prototxt"
    param = cch.load_net_param(name)
    net = _build(MODELS / name, sn.TRAIN, input_shapes=cch.stand_in_shapes(param, sn.TRAIN))
    cch.randomize_params(net, seed=0)
    x = cch.stand_in_values(net, np.random.default_rng(4))
    out = net.forward(**x)
    a, b = net.blobs["ipx"].data, net.blobs["ipy"].data
    n = a.shape[0]
    np.testing.assert_allclose(out["loss"].item(), np.sum((a - b) ** 2) / n / 2, rtol=1e-5)
    net.clear_param_diffs()
    net.backward()
    w = net.params["ipx"][0]
    expected = ((a - b) / n).T @ x["x"].reshape(n, -1)
    np.testing.assert_allclose(w.diff, expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ solvers

@pytest.mark.parametrize("name", SOLVERS)
def test_solver_parses(name):
    solver, _ = upgrade_solver(parse_solver(MODELS / name))
    assert solver.base_lr > 0 and solver.max_iter > 0
    assert solver.net or solver.train_net or solver.HasField("net_param")
    assert len(solver.test_state) in (0, len(solver.test_iter))


def test_consolidated_solver_inline_net_builds():
    """lenet_consolidated_solver.prototxt holds a V1 net (net_param) with two TEST data
    layers chosen by the solver's test_state stages."""
    solver = cch.load_solver("bvlc_mnist/lenet_consolidated_solver.prototxt")
    param = solver.net_param
    net = sn.Net(param, sn.TRAIN, backend=BACKEND,
                 input_shapes=cch.stand_in_shapes(param, sn.TRAIN))
    assert net.outputs == ["accuracy", "loss"]     # its accuracy layer has no phase rule
    assert net.blobs["data"].shape == (64, 1, 28, 28)
    stage_lists = [list(s.stage) for s in solver.test_state]
    assert stage_lists == [["test-on-test-set"], ["test-on-train-set"]]
    for stages in stage_lists:
        shapes = cch.stand_in_shapes(param, sn.TEST, stages)
        net = sn.Net(param, sn.TEST, stages=stages, backend=BACKEND, input_shapes=shapes)
        assert net.outputs == ["accuracy", "loss"]
        assert net.blobs["data"].shape == (100, 1, 28, 28)


@pytest.mark.parametrize("name", RUN_TRAIN)
def test_forward_backward_is_forward_then_backward(name, request):
    """Net.forward_backward (one plan, what the solver runs) leaves every blob's data
    and diff, and every param's diff accumulated onto what it held, as forward() then
    backward() do."""
    if name == "bvlc_pycaffe/linreg.prototxt":
        request.getfixturevalue("pyloss_path")
    param = cch.load_net_param(name)
    shapes = cch.stand_in_shapes(param, sn.TRAIN)
    nets = [_build(MODELS / name, sn.TRAIN, input_shapes=shapes) for _ in range(2)]
    inputs = cch.stand_in_values(nets[0], np.random.default_rng(3))
    rng = np.random.default_rng(4)
    start = None
    for net in nets:
        cch.randomize_params(net, seed=0)
        if start is None:
            start = [rng.standard_normal(b.diff.shape).astype(np.float32)
                     for blobs in net.params.values() for b in blobs]
        for b, d in zip([b for blobs in net.params.values() for b in blobs], start):
            b.diff[...] = d
    nets[0].forward(**inputs)
    nets[0].backward()
    nets[1].forward_backward(**inputs)
    for b in nets[0].blobs:
        for what in ("data", "diff"):
            np.testing.assert_allclose(getattr(nets[1].blobs[b], what),
                                       getattr(nets[0].blobs[b], what), rtol=1e-5,
                                       atol=1e-6, err_msg=f"{name}: blob '{b}' {what}")
    for layer, blobs in nets[0].params.items():
        for k, (b0, b1) in enumerate(zip(blobs, nets[1].params[layer])):
            np.testing.assert_allclose(b1.diff, b0.diff, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}: '{layer}' param {k} diff")
