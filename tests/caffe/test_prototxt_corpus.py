"""The shared corpus of real Caffe prototxt files (tests/data/models, see SOURCES.md)."""
import pathlib
import re
import time

import pytest

from symnet.formats.prototxt import parse_net, parse_solver
from symnet.formats.upgrade import upgrade_net, upgrade_solver

MODELS = pathlib.Path(__file__).parents[1] / "data" / "models"
FILES = sorted(p.relative_to(MODELS).as_posix() for p in MODELS.rglob("*.prototxt"))
_SOLVER_FIELDS = re.compile(r"^\s*(base_lr|max_iter|lr_policy|solver_mode|net|train_net)"
                            r"\s*:", re.M)


def is_solver(text):
    return bool(_SOLVER_FIELDS.search(text))


def is_v1(text):
    return re.search(r"^layers\s*\{", text, re.M) is not None


def test_corpus_is_complete():
    sources = (MODELS / "SOURCES.md").read_text()
    listed = set(re.findall(r"^\| ([\w./-]+\.prototxt) \|", sources, re.M))
    assert len(listed) == 34
    assert listed == set(FILES)
    assert (MODELS / "LICENSES.md").exists()


@pytest.mark.parametrize("name", FILES)
def test_corpus_file_parses(name):
    path = MODELS / name
    text = path.read_text()
    if is_solver(text):
        solver, _ = upgrade_solver(parse_solver(path))
        nets = [solver.net_param] if solver.HasField("net_param") else []
        assert solver.net or solver.train_net or nets
    else:
        raw = parse_net(path)
        assert bool(len(raw.layers)) == is_v1(text)
        net, _ = upgrade_net(raw)
        nets = [net]
    for net in nets:
        assert len(net.layers) == 0 and len(net.input) == 0 and len(net.layer) > 0
        for layer in net.layer:
            assert layer.name and layer.type


def test_corpus_kinds():
    texts = {name: (MODELS / name).read_text() for name in FILES}
    assert sum(is_solver(t) for t in texts.values()) == 6
    assert {n for n, t in texts.items() if is_v1(t)} == {
        "caffenet_v1/deploy.prototxt", "cifar10_v1/cifar10_quick.prototxt",
        "mnist_v1/lenet.prototxt", "mnist_v1/lenet_train_test.prototxt"}


def test_resnet50_parses_fast():
    text = (MODELS / "resnet" / "ResNet-50-deploy.prototxt").read_text()
    parse_net(text)  # warm up
    best = min(_timed(lambda: upgrade_net(parse_net(text))) for _ in range(3))
    assert best < 0.25, f"ResNet-50 deploy took {best:.3f} s to parse and upgrade"
    net, _ = upgrade_net(parse_net(text))
    assert len(net.layer) == 229


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
