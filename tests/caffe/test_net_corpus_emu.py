"""The corpus's nets on cuda-emu equal the cpu backend: the CUDA path (device memory,
cuBLAS's GEMM call sequence through the shim, the GPU-shaped kernels) computes what the
CPU path computes, blob by blob.

- every deploy net at batch 1: every blob after forward;
- the small train nets: forward_backward (what the solver runs), every blob's data and
  diff and every param's diff.

The two backends sum in different orders (one GEMM over the batch against one per
image, warp-shuffle reductions against sequential ones), so values agree to a float32
tolerance scaled by each blob's magnitude, not bit for bit.
"""
import pathlib
import sys

import numpy as np
import pytest

import symnet as sn

sys.path.insert(0, str(pathlib.Path(__file__).parent))   # tests/caffe helpers
import caffe_corpus_help as cch  # noqa: E402
from test_net_corpus import DEPLOY, RUN_TRAIN, _params, pyloss_path  # noqa: E402,F401

MODELS = cch.MODELS
RTOL = 2e-4


def _close(got, want, what):
    scale = max(float(np.abs(want).max()) if want.size else 0.0, 1e-3)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def _pair(name, phase, shapes, stages=()):
    nets = [sn.Net(MODELS / name, phase, backend=be, stages=list(stages),
                   input_shapes=shapes) for be in ("cpu", "cuda-emu")]
    for net in nets:
        cch.randomize_params(net, seed=0)
    return nets


@pytest.mark.parametrize("name", _params(DEPLOY))
def test_deploy_net_on_cuda_emu_equals_cpu(name):
    declared = cch.declared_input_shapes(cch.load_net_param(name))
    shapes = {b: (1,) + s[1:] for b, s in declared.items()}
    cpu, emu = _pair(name, sn.TEST, shapes)
    rng = np.random.default_rng(1)
    inputs = {b: rng.random(s, dtype=np.float32) for b, s in shapes.items()}
    cpu.forward(**inputs)
    emu.forward(**inputs)
    for b in cpu.blobs:
        _close(emu.blobs[b].data, cpu.blobs[b].data, f"{name}: blob '{b}'")


@pytest.mark.parametrize("name", RUN_TRAIN)
def test_train_net_on_cuda_emu_equals_cpu(name, request):
    if "linreg" in name:
        request.getfixturevalue("pyloss_path")
    param = cch.load_net_param(name)
    shapes = {b: (min(s[0], 8),) + s[1:]
              for b, s in cch.stand_in_shapes(param, sn.TRAIN).items()}
    cpu, emu = _pair(name, sn.TRAIN, shapes)
    inputs = cch.stand_in_values(cpu, np.random.default_rng(3))
    for net in (cpu, emu):
        net.clear_param_diffs()
        net.forward_backward(**inputs)
    for b in cpu.blobs:
        for what in ("data", "diff"):
            _close(getattr(emu.blobs[b], what), getattr(cpu.blobs[b], what),
                   f"{name}: blob '{b}' {what}")
    for layer, blobs in cpu.params.items():
        for k, (c, e) in enumerate(zip(blobs, emu.params[layer])):
            _close(e.diff, c.diff, f"{name}: '{layer}' param {k} diff")
