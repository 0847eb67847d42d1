"""The symnet command end to end on small nets: train (log, snapshots, resume,
signals), test, time, compile, draw, upgrade, device, plot-log, the data tools and
include-dir."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from symnet import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "tests", "data", "models")
LENET = os.path.join(MODELS, "bvlc_mnist", "lenet_train_test.prototxt")
LENET_SHAPES = ["--input-shape", "data=2,1,28,28", "--input-shape", "label=2"]

NET = """
name: "dummy"
layer { name: "x" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 8 dim: 3 } shape { dim: 8 dim: 2 }
                     data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""

SOLVER = """
net: "net.prototxt"
test_iter: 2
test_interval: 10
base_lr: 0.05
lr_policy: "step"
gamma: 0.5
stepsize: 10
momentum: 0.9
max_iter: {max_iter}
display: 10
snapshot: {snapshot}
snapshot_prefix: "snap/run"
random_seed: 3
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "snap").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_solver(path, max_iter=30, snapshot=15):
    path.write_text(SOLVER.format(max_iter=max_iter, snapshot=snapshot))
    return str(path)


def run_module(*args, timeout=300, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "symnet", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)


def test_train_log_snapshots_resume_and_plot(workdir, capsys):
    solver = write_solver(workdir / "solver.prototxt")
    assert cli.main(["train", "--solver", solver, "--log", "log.jsonl", "--backend", "cpu",
                     "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Iteration 10 (" in err and "loss = " in err
    assert "Test net output #0: loss = " in err
    assert sorted(os.listdir("snap")) == ["run_iter_15.caffemodel", "run_iter_15.solverstate",
                                          "run_iter_30.caffemodel", "run_iter_30.solverstate"]
    events = [json.loads(l) for l in open("log.jsonl")]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert [e["iter"] for e in events if e["event"] == "test"] == [0, 10, 20, 30]
    assert [e["iter"] for e in events if e["event"] == "snapshot"] == [15, 30]
    assert [e["lr"] for e in events if e["event"] == "lr"] == pytest.approx([0.05, 0.025, 0.0125])
    assert cli.main(["plot-log", "log.jsonl", "plot.png"]) == 0
    assert (workdir / "plot.png").stat().st_size > 1000

    # resume from the iteration-15 snapshot with `python -m symnet`: same final weights
    final = open("snap/run_iter_30.caffemodel", "rb").read()
    os.remove("snap/run_iter_30.caffemodel")
    r = run_module("train", "--solver", solver, "--snapshot", "snap/run_iter_15.solverstate",
                   "--backend", "cpu")
    assert r.returncode == 0, r.stderr
    assert "Restoring previous solver status from snap/run_iter_15.solverstate" in r.stderr
    assert "Iteration 20" in r.stderr and "Iteration 10 (" not in r.stderr
    assert open("snap/run_iter_30.caffemodel", "rb").read() == final

    # test the trained net
    assert cli.main(["test", "--model", "net.prototxt", "--weights",
                     "snap/run_iter_30.caffemodel", "--iterations", "3",
                     "--backend", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Batch 2, loss = " in out and "Loss: " in out


def test_train_with_weights(workdir, capsys):
    solver = write_solver(workdir / "solver.prototxt", max_iter=2, snapshot=0)
    assert cli.main(["train", "--solver", solver, "--backend", "cpu", "--no-progress"]) == 0
    assert cli.main(["train", "--solver", solver, "--weights", "snap/run_iter_2.caffemodel",
                     "--backend", "numpy", "--quiet", "--no-progress"]) == 0
    assert cli.main(["train", "--solver", solver, "--weights", "a", "--snapshot", "b"]) == 1
    assert "either --weights or --snapshot" in capsys.readouterr().err


@pytest.mark.parametrize("sig,effect,stops", [
    ("SIGINT", "stop", True), ("SIGHUP", "snapshot", False), ("SIGINT", "none", False)])
def test_train_signals(workdir, sig, effect, stops):
    solver = write_solver(workdir / "solver.prototxt", max_iter=400000, snapshot=0)
    opt = "--sigint_effect" if sig == "SIGINT" else "--sighup_effect"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "symnet", "train", "--solver", solver,
                             "--log", "log.jsonl", "--backend", "cpu", opt, effect],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if os.path.exists("log.jsonl") and '"train"' in open("log.jsonl").read():
                break
            time.sleep(0.2)
        else:
            pytest.fail("training did not start")
        proc.send_signal(getattr(signal, sig))
        if stops:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert "Optimization stopped early." in err
            assert any(f.endswith(".solverstate") for f in os.listdir("snap"))
            return
        if effect == "snapshot":
            deadline = time.time() + 60
            while time.time() < deadline and not os.listdir("snap"):
                time.sleep(0.2)
            assert any(f.endswith(".solverstate") for f in os.listdir("snap"))
        else:
            time.sleep(1.0)
            assert proc.poll() is None          # "none": training goes on
            assert not os.listdir("snap")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_time(capsys):
    assert cli.main(["time", "--model", LENET, *LENET_SHAPES, "--iterations", "2",
                     "--backend", "cpu"]) == 0
    out = capsys.readouterr().out
    for layer in ("conv1", "pool1", "conv2", "ip1", "relu1", "ip2", "loss"):
        assert f"{layer}   forward: " in out and f"{layer}  backward: " in out
    assert "Average Forward-Backward: " in out
    kernels = [l for l in out.splitlines() if l.startswith(("forward ", "backward "))]
    assert any(("gemm" in l or "conv" in l.split()[3]) and "conv2" in l for l in kernels)
    assert any("ip1, relu1" in l for l in kernels)      # a kernel fusing two layers
    ms = [float(l.split()[4]) for l in kernels]
    assert sum(ms) > 0


def test_time_prints_transfers_on_the_emulated_device(capsys):
    assert cli.main(["time", "--model", LENET, "--input-shape", "data=2,1,28,28",
                     "--input-shape", "label=2", "--iterations", "2",
                     "--backend", "cuda-emu"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines()
                if l.startswith("Transfers per iteration"))
    up, down = [int(v.replace(",", "")) for v in re.findall(r"([\d,]+) bytes", line)]
    # the stand-in inputs went up once, before the timed iterations (nothing writes
    # them again); forward() returns the loss, which comes down; backward() moves nothing
    assert up <= 1.05 * (2 * 28 * 28 * 4 + 2 * 4) and down <= 64, line


def test_compile(tmp_path, capsys):
    out = tmp_path / "emit"
    assert cli.main(["compile", "--model", LENET, *LENET_SHAPES, "--emit", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert names == ["backward.c", "backward.cu", "forward.c", "forward.cu", "plan.json"]
    assert "SN_KERNEL" in (out / "forward.c").read_text()
    assert "__global__" in (out / "backward.cu").read_text()
    plan = json.loads((out / "plan.json").read_text())
    assert set(plan["plans"]) == {"forward", "backward"}
    assert set(plan["plans"]["forward"]) == {"cpu", "cuda"}
    steps = plan["plans"]["forward"]["cpu"]["steps"]
    # batch 2: the convolutions are BLAS GEMMs (per image, or whole-batch columns when
    # there are fewer images than threads), the inner products column-split GEMVs
    assert any(s["kind"] == "kernel" and s["name"].startswith(("sn_conv_images",
                                                                "sn_gemm_blas"))
               for s in steps)
    assert any(s["kind"] == "kernel" and s["name"].startswith("sn_gemv_cpu") for s in steps)
    assert any(s["kind"] == "gemm" and s["name"] == "sgemm"
               for s in plan["plans"]["forward"]["cuda"]["steps"])


def test_draw_dot_without_graphviz_program(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    dot = tmp_path / "net.dot"
    assert cli.main(["draw", "--model", LENET, *LENET_SHAPES, str(dot)]) == 0
    text = dot.read_text()
    assert "conv1" in text and "(Convolution)" in text and "->" in text
    # an image format without dot: the .dot file is written and the message says how
    # to render it
    svg = tmp_path / "n.svg"
    assert cli.main(["draw", "--model", LENET, *LENET_SHAPES, str(svg)]) == 0
    err = capsys.readouterr().err
    assert not svg.exists()
    assert (tmp_path / "n.dot").read_text() == text
    assert "Graphviz's 'dot' program is not installed" in err
    assert f"dot -Tsvg {tmp_path / 'n.dot'} -o {svg}" in err and "apt-get install graphviz" in err


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz's dot program is not installed (svg/png need it)")
@pytest.mark.parametrize("ext", ["svg", "png"])
def test_draw_rendered(tmp_path, ext):
    out = tmp_path / f"lenet.{ext}"
    assert cli.main(["draw", "--model", LENET, *LENET_SHAPES, "--color-by-kernel",
                     str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if ext == "png" else b"<svg" in data
    if ext == "svg":
        text = data.decode()
        assert "relu1" in text and "(ReLU)" in text and "gemm" in text   # kernel names


def test_color_by_kernel_groups():
    import symnet as sn
    net = sn.Net(LENET, sn.TRAIN, backend="numpy",
                 input_shapes={"data": (2, 1, 28, 28), "label": (2,)})
    groups = cli.kernel_groups(net)
    assert groups["ip1"][0] == groups["relu1"][0]
    assert groups["conv1"][0] != groups["conv2"][0]


def test_upgrade(tmp_path, capsys):
    new = tmp_path / "lenet.prototxt"
    assert cli.main(["upgrade", os.path.join(MODELS, "mnist_v1", "lenet.prototxt"),
                     str(new)]) == 0
    assert 'type: "Convolution"' in new.read_text()
    assert "upgraded" in capsys.readouterr().out


def test_device():
    r = run_module("device")
    assert r.returncode == 0, r.stderr
    lines = {l.split()[0]: l for l in r.stdout.splitlines() if l.strip()}
    assert lines["cpu"].split()[1] == "yes"
    assert lines["numpy"].split()[1] == "yes"
    assert lines["nvcc"].split()[1] == ("yes" if shutil.which("nvcc") else "no")
    assert "default backend:" in r.stdout


def test_plot_log_errors(tmp_path, monkeypatch, capsys):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"event": "train", "iter": 0, "loss": 1.0}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["plot-log", str(log), str(tmp_path / "p.png")]) == 1
    assert "pip install 'symnet[tools]'" in capsys.readouterr().err
    log.write_text("I0101 not json\n")
    assert cli.main(["plot-log", str(log), str(tmp_path / "p.png")]) == 1
    assert "not a JSON line" in capsys.readouterr().err


def test_convert_imageset_and_mean(tmp_path, capsys):
    from PIL import Image
    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    arrays = []
    for i in range(3):
        a = rng.integers(0, 255, size=(6, 5, 3), dtype=np.uint8)
        arrays.append(a)
        Image.fromarray(a).save(imgs / f"{i}.png")
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(3)))
    db = tmp_path / "db"
    assert cli.main(["convert-imageset", str(tmp_path / "list.txt"), str(imgs) + "/",
                     str(db), "--quiet"]) == 0
    assert "Processed 3 files" in capsys.readouterr().out
    mean = tmp_path / "mean.binaryproto"
    assert cli.main(["compute-image-mean", str(db), str(mean)]) == 0
    from symnet.formats import prototxt
    m = prototxt.read_blobproto(str(mean))
    expected = np.mean([a[:, :, ::-1].transpose(2, 0, 1) for a in arrays], axis=0)
    np.testing.assert_allclose(m.reshape(expected.shape), expected, rtol=1e-5)


def test_include_dir(capsys):
    assert cli.main(["include-dir"]) == 0
    path = capsys.readouterr().out.strip()
    assert os.path.isfile(os.path.join(path, "symnet_data.h"))


def test_layers_option(capsys):
    with pytest.raises(SystemExit):           # device builds no net: no --layers
        cli.main(["device", "--layers", "no_such_module_xyz"])
    assert cli.main(["time", "--model", LENET, "--layers", "no_such_module_xyz",
                     "--iterations", "1"]) == 1
    assert "cannot import" in capsys.readouterr().err


def test_python_dash_m_help():
    r = run_module("--help")
    assert r.returncode == 0
    for cmd in ("train", "test", "time", "compile", "draw", "upgrade", "device", "plot-log",
                "convert-imageset", "compute-image-mean", "include-dir"):
        assert cmd in r.stdout


def test_quickstart_files_are_caffes_lenet():
    """examples/mnist's LeNet files are Caffe's with only the LMDB paths and the
    iteration counts changed."""
    from symnet.formats import prototxt
    ex = os.path.join(ROOT, "examples", "mnist")
    net = prototxt.parse_net(os.path.join(ex, "lenet_train_test.prototxt"))
    caffe_net = prototxt.parse_net(LENET)
    for a, b in zip(net.layer, caffe_net.layer):
        if a.type == "Data":
            assert "digits_" in a.data_param.source
            a.data_param.source = b.data_param.source
    assert net == caffe_net
    solver = prototxt.parse_solver(os.path.join(ex, "lenet_solver.prototxt"))
    caffe_solver = prototxt.parse_solver(os.path.join(MODELS, "bvlc_mnist",
                                                      "lenet_solver.prototxt"))
    assert solver.net == "examples/mnist/lenet_train_test.prototxt"
    for f in ("test_iter", "test_interval", "max_iter", "snapshot"):
        solver.ClearField(f)
        caffe_solver.ClearField(f)
    assert solver == caffe_solver
