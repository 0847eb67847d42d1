"""``symnet run SCRIPT``: a pycaffe script with a plain ``import caffe`` runs on
symnet (subprocess, as a user would run it)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import caffe
    from caffe import layers as L, params as P
    import caffe.io
    from caffe.proto import caffe_pb2

    caffe.set_mode_gpu()          # no GPU here: a warning, the net runs on the CPU
    caffe.set_random_seed(3)
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 4, 4]))
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=2,
                           weight_filler=dict(type="gaussian", std=0.5),
                           bias_filler=dict(type="constant", value=0.25))
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    path = sys.argv[1]
    with open(path, "w") as f:
        f.write(str(n.to_proto()))
    net = caffe.Net(path, caffe.TEST)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    net.blobs["data"].data[...] = x
    out = net.forward()["pool"]
    W, b = net.params["conv"][0].data, net.params["conv"][1].data
    conv = np.zeros((2, 2, 2, 2), np.float32)
    for i in range(2):
        for j in range(2):
            conv[:, :, i, j] = np.einsum("nchw,ochw->no", x[:, :, i:i + 3, j:j + 3], W) + b
    ref = conv.max(axis=(2, 3), keepdims=True)
    assert np.allclose(out, ref, atol=1e-5), (out, ref)
    assert isinstance(caffe_pb2.NetParameter(), caffe.proto.caffe_pb2.NetParameter)
    print("ran", caffe.__name__, __name__, sys.argv[2:])
''')


def _run(args, cwd, extra_path=None):
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "symnet", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_run_pycaffe_script_with_plain_import_caffe(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    # a Caffe source tree without a built _caffe on the path must not shadow symnet
    tree = tmp_path / "caffe_src" / "python"
    (tree / "caffe").mkdir(parents=True)
    (tree / "caffe" / "__init__.py").write_text("from ._caffe import Net\n")
    r = _run([str(script), str(tmp_path / "net.prototxt"), "--flag", "x"], cwd=tmp_path,
             extra_path=str(tree))
    assert r.returncode == 0, r.stderr
    assert "ran symnet.caffe __main__ ['--flag', 'x']" in r.stdout
    assert "set_mode_gpu: no usable CUDA device" in r.stderr


def test_run_script_exit_code_and_missing_script(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys, caffe\nsys.exit(3)\n")
    assert _run([str(script)], cwd=tmp_path).returncode == 3
    r = _run([str(tmp_path / "nope.py")], cwd=tmp_path)
    assert r.returncode == 1 and "no script" in r.stderr
    script.write_text("import caffe\n\ndef f():\n    raise ValueError('from the script')\n"
                      "f()\n")
    r = _run([str(script)], cwd=tmp_path)          # the script's traceback, as python's
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "ValueError: from the script" in r.stderr
    assert f'File "{script}", line 4, in f' in r.stderr


# ------------------------------------------------------------------ CLI friction

PY_NET = '''
name: "pynet"
input: "data" input_shape { dim: 2 dim: 3 }
input: "label" input_shape { dim: 2 dim: 3 }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 } }
layer { name: "loss" type: "Python" bottom: "ip" bottom: "label" top: "loss"
  python_param { module: "pyloss_not_on_path" layer: "EuclideanLossLayer" }
  loss_weight: 1 }
'''


def test_upgrade_and_draw_never_import_python_layer_modules(tmp_path):
    from symnet import cli
    src = tmp_path / "net.prototxt"
    src.write_text(PY_NET)
    before = set(sys.modules)
    assert cli.main(["upgrade", str(src), str(tmp_path / "new.prototxt")]) == 0
    new = (tmp_path / "new.prototxt").read_text()
    assert 'type: "Input"' in new and 'module: "pyloss_not_on_path"' in new
    assert cli.main(["draw", "--model", str(src), str(tmp_path / "net.dot")]) == 0
    dot = (tmp_path / "net.dot").read_text()
    assert "loss\\n(Python)" in dot and '"ip_blob" -> "loss_Python"' in dot
    assert not any("pyloss" in m for m in set(sys.modules) - before)


def test_layers_module_found_in_the_current_directory(tmp_path):
    (tmp_path / "mylayers_cwd.py").write_text(
        "import symnet as sn\n"
        "@sn.layer('TimesThreeCwd')\n"
        "def times_three(x):\n"
        "    return x * 3.0\n")
    (tmp_path / "net.prototxt").write_text(
        'name: "t"\nlayer { name: "in" type: "Input" top: "x" '
        'input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "t3" type: "TimesThreeCwd" bottom: "x" top: "y" }\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    symnet_exe = os.path.join(os.path.dirname(sys.executable), "symnet")
    r = subprocess.run([symnet_exe, "compile", "--model", "net.prototxt", "--emit", "out",
                        "--layers", "mylayers_cwd"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "plan.json").is_file()


def _help(command):
    from symnet import cli
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command].format_help()


@pytest.mark.parametrize("command,has,lacks", [
    ("upgrade", [], ["--backend", "--layers", "--model"]),
    ("device", [], ["--backend", "--layers"]),
    ("plot-log", [], ["--backend", "--layers"]),
    ("convert-imageset", ["--resize_height"], ["--backend", "--layers"]),
    ("compute-image-mean", [], ["--backend", "--layers"]),
    ("include-dir", [], ["--backend", "--layers"]),
    ("compile", ["--model", "--layers", "--emit"], ["--backend"]),
    ("draw", ["--model", "--rankdir"], ["--backend"]),
    ("run", ["--force-alias"], ["--backend", "--layers", "--model"]),
    ("train", ["--solver", "--backend", "--layers"], ["--model"]),
    ("test", ["--model", "--weights", "--backend", "--layers"], ["--solver"]),
])
def test_help_lists_only_the_options_a_command_uses(command, has, lacks):
    text = _help(command)
    for opt in has:
        assert opt in text, opt
    for opt in lacks:
        assert opt not in text, opt
