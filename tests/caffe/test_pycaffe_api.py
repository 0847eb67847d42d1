"""pycaffe's module-level API on symnet.caffe: the ``import caffe`` alias,
layer_type_list, set_mode_gpu without a GPU, Timer, init_log/log, solver_count/rank,
and solver progress on stderr by default."""
from __future__ import annotations

import importlib.machinery
import logging
import os
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

import symnet.caffe as caffe
from symnet.caffe import alias

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def clean_alias(monkeypatch):
    saved = {k: v for k, v in sys.modules.items() if k == "caffe" or k.startswith("caffe.")}
    for k in saved:
        monkeypatch.delitem(sys.modules, k)
    yield
    alias.uninstall_alias()
    for k in [k for k in sys.modules if k == "caffe" or k.startswith("caffe.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_alias_resolves_every_pycaffe_module(clean_alias):
    assert alias.install_alias() is True
    import importlib
    import caffe as c
    assert c is caffe
    for sub in ("proto", "proto.caffe_pb2", "io", "net_spec", "draw", "coord_map",
                "classifier", "detector", "pycaffe"):
        mod = importlib.import_module(f"caffe.{sub}")
        assert mod is importlib.import_module(f"symnet.caffe.{sub}"), sub
    from caffe import layers as L, params as P
    assert L is caffe.layers and P is caffe.params
    from caffe.proto import caffe_pb2
    assert caffe_pb2.NetParameter is caffe.caffe_pb2.NetParameter
    from caffe import Classifier, Detector, draw  # noqa: F401
    assert caffe.Classifier is Classifier


def _fake_pycaffe(root, built):
    pkg = root / "caffe"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("REAL = True\n" if built else "from ._caffe import Net\n")
    if built:
        (pkg / ("_caffe" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")
    return str(root)


def test_a_built_pycaffe_is_left_alone_unless_forced(clean_alias, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(_fake_pycaffe(tmp_path / "real", built=True))
    assert alias.built_pycaffe_dir() == str(tmp_path / "real" / "caffe")
    assert alias.install_alias() is False
    import caffe as c
    assert getattr(c, "REAL", False)
    assert alias.install_alias() is False          # already imported: still left alone
    assert alias.install_alias(force=True) is True
    import caffe as c2
    assert c2 is caffe


def test_a_source_tree_without_built_caffe_does_not_shadow(clean_alias, tmp_path,
                                                            monkeypatch):
    monkeypatch.syspath_prepend(_fake_pycaffe(tmp_path / "src", built=False))
    assert alias.built_pycaffe_dir() is None
    assert alias.install_alias() is True
    import caffe as c
    import caffe.io as cio
    assert c is caffe and cio is caffe.io


def test_layer_type_list_sorted_as_caffes_registry():
    types = caffe.layer_type_list()
    assert types == sorted(types, key=lambda s: s.encode())    # std::map byte order
    for t in ("Convolution", "InnerProduct", "ReLU", "Input", "Python", "Data",
              "DummyData", "HDF5Data", "SoftmaxWithLoss", "BNLL", "BatchNorm"):
        assert t in types
    assert types.index("BNLL") < types.index("BatchNorm")      # upper case first
    assert len(set(types)) == len(types)


def test_set_mode_gpu_warns_once_and_stays_on_cpu(monkeypatch):
    monkeypatch.setattr(caffe._devices, "cuda_usable", lambda: False)
    monkeypatch.setattr(caffe, "_gpu_warned", False)
    monkeypatch.setitem(caffe._mode, "backend", None)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        caffe.set_mode_gpu()
        caffe.set_mode_gpu()
    assert len(w) == 1 and "no usable CUDA device" in str(w[0].message)
    assert caffe._mode["backend"] is None
    monkeypatch.setattr(caffe._devices, "cuda_usable", lambda: True)
    caffe.set_mode_gpu()
    assert caffe._mode["backend"] == "cuda"
    caffe.set_mode_cpu()
    assert caffe._mode["backend"] == "cpu"


def test_solver_count_rank_version_timer():
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0
    assert caffe.__version__ == "1.0.0"
    t = caffe.Timer()
    assert t.ms == 0.0
    t.start()
    time.sleep(0.02)
    t.stop()
    ms = t.ms
    assert 15.0 <= ms < 2000.0
    time.sleep(0.01)
    assert t.ms == ms                            # stopped: fixed


def test_log_and_init_log(caplog):
    with caplog.at_level(logging.INFO, logger="symnet"):
        caffe.log("hello from pycaffe")
    assert "hello from pycaffe" in caplog.text
    try:
        caffe.init_log(1)                        # glog WARNING and above
        assert not logging.getLogger("symnet").isEnabledFor(logging.INFO)
        assert logging.getLogger("symnet.solver").isEnabledFor(logging.WARNING)
    finally:
        import symnet
        symnet.set_log_level(None)


TRAIN_SCRIPT = textwrap.dedent('''
    import sys
    import symnet.caffe as caffe
    net = """
    name: "tiny"
    layer { name: "x" type: "DummyData" top: "x" top: "y"
      dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                         data_filler { type: "gaussian" } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p"
      inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
    """
    open(sys.argv[1] + "/net.prototxt", "w").write(net)
    open(sys.argv[1] + "/solver.prototxt", "w").write(
        'net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" display: 1 max_iter: 2 '
        'solver_mode: CPU')
    s = caffe.SGDSolver(sys.argv[1] + "/solver.prototxt")
    s.step(2)
''')


@pytest.mark.parametrize("quiet", ["", "quiet", "set_log_level"])
def test_training_logs_progress_on_stderr_by_default(tmp_path, quiet):
    script = tmp_path / "train.py"
    body = TRAIN_SCRIPT
    if quiet == "set_log_level":
        body = "import symnet\nsymnet.set_log_level('quiet')\n" + body
    script.write_text(body)
    env = dict(os.environ, SYMNET_LOG=quiet if quiet == "quiet" else "")
    r = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    if quiet:
        assert "Iteration" not in r.stderr
    else:
        assert "Iteration 1" in r.stderr and "loss = " in r.stderr


def test_user_logging_configuration_wins(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import logging\nlogging.basicConfig(level=logging.WARNING)\n"
                      + TRAIN_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, SYMNET_LOG=""))
    assert r.returncode == 0, r.stderr
    assert "Iteration" not in r.stderr            # the user asked for warnings only
