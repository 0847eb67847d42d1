"""caffe.draw on the corpus's nets (the DOT text holds every layer, blob and edge,
read from the prototxt alone) and caffe.coord_map on FCN nets (crop offsets from
Caffe's coordinate-map formulas)."""
from __future__ import annotations

import glob
import os
import re
import shutil
import sys

import numpy as np
import pytest

from symnet.caffe import coord_map as cm
from symnet.caffe import draw
from symnet.caffe import layers as L
from symnet.caffe import params as P
from symnet.formats import prototxt, upgrade
from symnet.caffe.net_spec import NetSpec
from symnet.net import TEST, TRAIN, layer_included

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "tests", "data", "models")
NETS = sorted(p for p in glob.glob(os.path.join(MODELS, "*", "*.prototxt"))
              if "solver" not in os.path.basename(p))
FCN8S = os.path.join(MODELS, "fcn_voc8s", "deploy.prototxt")


def _q(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.mark.parametrize("path", NETS, ids=lambda p: os.path.relpath(p, MODELS))
@pytest.mark.parametrize("phase", [None, TRAIN, TEST])
def test_dot_text_has_every_layer_blob_and_edge(path, phase):
    net = upgrade.upgrade_net(prototxt.parse_net(path))[0]
    text = draw.get_dot_source(path, rankdir="TB", phase=phase)
    assert text.startswith("digraph ") and text.rstrip().endswith("}")
    edges = re.findall(r'^  ("(?:[^"\\]|\\.)*") -> ("(?:[^"\\]|\\.)*")', text, re.M)
    want, shown_nodes, all_nodes = [], set(), set()
    for lp in net.layer:
        node = _q(f"{lp.name}_{lp.type}")
        shown = phase is None or layer_included(lp, phase, 0, ())
        all_nodes.add(node)
        if shown:
            shown_nodes.add(node)
            assert f"{lp.name} ({lp.type})" in text       # TB: one-line label
            want += [(_q(b + "_blob"), node) for b in lp.bottom]
            want += [(node, _q(t + "_blob")) for t in lp.top]
    assert edges == want
    for node in all_nodes:     # train and test layers of one name share their node
        assert (f"\n  {node} [label=" in text) == (node in shown_nodes), node


def test_labels_and_edge_labels():
    text = draw.get_dot_source(os.path.join(MODELS, "bvlc_mnist", "lenet_train_test.prototxt"),
                               phase=TRAIN)
    assert '"conv1\\n(Convolution)\\nkernel size: 5\\nstride: 1\\npad: 0"' in text
    assert '"pool1\\n(Pooling)\\npool: MAX\\nkernel size: 2\\nstride: 2\\npad: 0"' in text
    assert '"conv1_Convolution" -> "conv1_blob" [label="20"]' in text
    assert '"ip2_InnerProduct" -> "ip2_blob" [label="10"]' in text
    assert '"mnist_Data" -> "data_blob" [label="Batch 64"]' in text
    assert '"relu1_ReLU" [label="relu1\\n(ReLU)", shape="record", fillcolor="#90EE90"' in text


def test_draw_never_imports_a_python_layer_module(tmp_path, monkeypatch):
    path = os.path.join(MODELS, "bvlc_pycaffe", "linreg.prototxt")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != ""])
    before = set(sys.modules)
    out = tmp_path / "linreg.dot"
    draw.draw_net_to_file(prototxt.parse_net(path), str(out))
    assert "(Python)" in out.read_text()
    assert not {m for m in set(sys.modules) - before if "pyloss" in m}


def test_rendering_without_dot_names_the_program(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(draw.GraphvizError, match="Graphviz's 'dot' program"):
        draw.draw_net(FCN8S, ext="png")
    assert draw.draw_net(FCN8S, ext="dot").startswith(b"digraph")


def test_get_pydot_graph_names_pydot_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydot", None)
    with pytest.raises(draw.GraphvizError, match="pydot"):
        draw.get_pydot_graph(FCN8S)


# ------------------------------------------------------------------ coord_map

def _conv_map(k, s, p):          # Caffe's map of a convolution / pooling
    return 1.0 / s, (p - (k - 1) / 2.0) / s


def test_fcn8s_crop_offsets_match_the_prototxt():
    tops = cm.tops_of(FCN8S)
    assert cm.crop_offsets(tops["score_pool4"], tops["upscore2"]) == (2, [5])
    assert cm.crop_offsets(tops["score_pool3"], tops["upscore_pool4"]) == (2, [9])
    assert cm.crop_offsets(tops["upscore8"], tops["data"]) == (2, [31])
    ax, a, b = cm.coord_map_from_to(tops["score_pool4"], tops["upscore2"])
    assert ax == 1 and np.all(a == 1) and np.all(b == -5)


def _vgg_fcn():
    """VGG16-FCN's trunk in NetSpec (pad 100 on conv1_1), as the FCN code builds it."""
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 500, 500]))
    bottom = n.data
    for stage, convs in enumerate((2, 2, 3, 3, 3), 1):
        for i in range(1, convs + 1):
            pad = 100 if (stage, i) == (1, 1) else 1
            conv = L.Convolution(bottom, kernel_size=3, pad=pad, num_output=8)
            n[f"conv{stage}_{i}"] = conv
            n[f"relu{stage}_{i}"] = bottom = L.ReLU(conv, in_place=True)
        n[f"pool{stage}"] = bottom = L.Pooling(bottom, kernel_size=2, stride=2,
                                               pool=P.Pooling.MAX)
    n.fc6 = L.Convolution(bottom, kernel_size=7, num_output=8)
    n.relu6 = L.ReLU(n.fc6, in_place=True)
    n.fc7 = L.Convolution(n.relu6, kernel_size=1, num_output=8)
    n.relu7 = L.ReLU(n.fc7, in_place=True)
    n.score_fr = L.Convolution(n.relu7, kernel_size=1, num_output=21)
    return n


def _walk(first, layers):
    """Compose maps walking down from a top: ``first`` (a, b), then each layer's
    (k, s, p) map, nearest first (compose: a = a1 a2, b = a1 b2 + b1)."""
    a, b = first
    for k, s, p in layers:
        a2, b2 = _conv_map(k, s, p)
        a, b = a * a2, a * b2 + b
    return a, b


# VGG16-FCN from score_fr down to data, nearest first (k, stride, pad)
_DOWN_TO_DATA = [(1, 1, 0), (1, 1, 0), (7, 1, 0), (2, 2, 0)] + [(3, 1, 1)] * 3 + \
    [(2, 2, 0)] + [(3, 1, 1)] * 3 + [(2, 2, 0)] + [(3, 1, 1)] * 3 + [(2, 2, 0)] + \
    [(3, 1, 1)] * 2 + [(2, 2, 0), (3, 1, 1), (3, 1, 100)]


def _expected_fcn32_offset():
    # upscore (deconvolution k 64, s 32: a = 32, b = (64 - 1) / 2 - 0), then down
    a, b = _walk((32.0, 31.5), _DOWN_TO_DATA)
    assert a == 1
    # data is the common top: the map upscore -> data is the inverse, shift -b / a;
    # the crop offset is minus that shift
    return b / a


def test_fcn32s_crop_from_netspec():
    n = _vgg_fcn()
    n.upscore = L.Deconvolution(n.score_fr, convolution_param=dict(
        num_output=21, kernel_size=64, stride=32, bias_term=False))
    want = _expected_fcn32_offset()
    assert want == 19
    n.score = cm.crop(n.upscore, n.data)
    proto = n.to_proto()
    crop = [l for l in proto.layer if l.type == "Crop"][0]
    assert list(crop.bottom) == ["upscore", "data"]
    assert crop.crop_param.axis == 2 and list(crop.crop_param.offset) == [19]


def test_fcn16s_crop_of_pool4_score():
    n = _vgg_fcn()
    n.upscore2 = L.Deconvolution(n.score_fr, convolution_param=dict(
        num_output=21, kernel_size=4, stride=2, bias_term=False))
    n.score_pool4 = L.Convolution(n.pool4, kernel_size=1, num_output=21)
    # from upscore2 (k 4, s 2: a = 2, b = 1.5) down to pool4's blob, the common top
    # (score_pool4, a 1x1 convolution, maps pool4 by the identity): the map
    # score_pool4 -> upscore2 is (a, b) itself, and the crop offset is -b
    a, b = _walk((2.0, 1.5), _DOWN_TO_DATA[:7])
    assert a == 1 and -b == 5                 # the offset FCN-16s uses
    ax, off = cm.crop_offsets(n.score_pool4, n.upscore2)
    assert (ax, off) == (2, [5])


def test_unconnected_tops_and_scale_mismatch():
    n = NetSpec()
    n.a = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.b = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.p = L.Pooling(n.a, kernel_size=2, stride=2)
    with pytest.raises(RuntimeError, match="common ancestor"):
        cm.coord_map_from_to(n.a, n.b)
    with pytest.raises(ValueError, match="scale mismatch"):
        cm.crop(n.p, n.a)
