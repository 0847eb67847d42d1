"""``symnet run SCRIPT``: a pycaffe script with a plain ``import caffe`` runs on
symnet (subprocess, as a user would run it)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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
