"""Device residency: what moves between host and device, counted.

Caffe's SyncedMemory semantics (memory.py) checked head by head; the emulated device
rejecting host addresses; and the issue's targets on cuda-emu after warm-up:
- a training step with Input layers written from Python: host-to-device at most 1.05x
  the images and labels, device-to-host at most 64 B plus the loss Python reads;
- a deploy forward at batch 1: host-to-device at most 1.05x the input blob,
  device-to-host at most the output blob + 64 B; reading one inner blob afterwards costs
  exactly that blob's bytes;
- the results equal the cpu backend's.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

import symnet as sn
from symnet import runtime
from symnet.codegen import lower
from symnet.runtime.executor import Executor
from symnet.runtime.memory import (DEVICE, HOST, SYNCED, DeviceError, SyncedMemory,
                                   get_device)

MODELS = pathlib.Path(__file__).parents[1] / "data" / "models"
EMU = get_device("cuda-emu")


def counts():
    return runtime.transfer_counts()


# ------------------------------------------------------------------ SyncedMemory
def test_heads_follow_caffe():
    runtime.reset_transfer_counts()
    m = SyncedMemory((4, 5))
    m.host_write()[...] = 3.0
    assert m.head == HOST
    m.device_read(EMU)
    assert m.head == SYNCED and counts()["h2d_bytes"] == 80
    m.device_read(EMU)                      # already current: nothing moves
    assert counts()["h2d_calls"] == 1
    m.device_write(EMU)
    assert m.head == DEVICE
    np.testing.assert_array_equal(m.host_read(), 3.0)
    assert m.head == SYNCED and counts()["d2h_bytes"] == 80
    m.host_read()
    assert counts()["d2h_calls"] == 1
    m.host_write()                          # pycaffe's blob.data: the host is the head
    assert m.head == HOST
    m.device_overwrite(EMU)                 # a result replacing every value: no upload
    assert m.head == DEVICE and counts()["h2d_calls"] == 1


def test_views_share_their_parent_head():
    flat = SyncedMemory((10,))
    a, b = flat.view(0, (2, 2)), flat.view(4, (6,))
    a.host_write()[...] = 1.0
    b.host_write()[...] = 2.0
    np.testing.assert_array_equal(flat.host_read(), [1] * 4 + [2] * 6)
    runtime.reset_transfer_counts()
    ptr = b.device_read(EMU)
    assert ptr == flat.device_ptr(EMU) + 16 and a.head == SYNCED
    assert counts()["h2d_bytes"] == 40      # the whole parent moves
    b.fill_zero()                           # on the device: nothing moves
    a.device_write(EMU)
    assert counts()["h2d_calls"] == 1 and counts()["d2h_calls"] == 0
    np.testing.assert_array_equal(flat.host_read(), [1] * 4 + [0] * 6)


def test_copy_between_device_memories_stays_on_the_device():
    src, dst = SyncedMemory((3,)), SyncedMemory((3,))
    src.host_write()[...] = [1, 2, 3]
    src.device_write(EMU)
    runtime.reset_transfer_counts()
    dst.copy_from(src)
    assert counts() == dict.fromkeys(counts(), 0) and dst.head == DEVICE
    np.testing.assert_array_equal(dst.host_read(), [1, 2, 3])


# ------------------------------------------------------------------ the emulated device
def _elementwise_plan():
    with sn.graph_scope() as g:
        x = sn.input("x", (4, 8))
        y = sn.exp(x) * 2.0
        return lower.lower(g, [x.id], [y.id], "cuda-emu")


def test_emulator_rejects_a_host_pointer():
    plan = _elementwise_plan()
    ex = Executor(plan)
    host = np.zeros(64, np.float32)
    step = next(s for s in plan.steps if s.kind == "kernel")
    packed = [("p", host.ctypes.data) if a[0] == "buf" else ("l", a[1]) for a in step.args]
    with pytest.raises(DeviceError, match=rf"kernel {step.name}: argument \d+ is 0x"):
        ex.backend.prepare(step, packed)


def test_emulator_gemm_rejects_a_host_matrix():
    with sn.graph_scope() as g:
        a, b = sn.input("a", (3, 4)), sn.input("b", (4, 5))
        plan = lower.lower(g, [a.id, b.id], [sn.matmul(a, b).id], "cuda-emu")
    ex = Executor(plan)
    step = next(s for s in plan.steps if s.kind == "gemm")
    dev = [SyncedMemory((64,)).device_ptr(EMU) for _ in range(2)]
    host = np.zeros(64, np.float32)
    with pytest.raises(DeviceError, match=r"GEMM sgemm: matrix [ABC]"):
        ex.backend.prepare_gemm(step, dev[0], host.ctypes.data, dev[1])


def test_device_copies_check_their_range():
    m = SyncedMemory((4,))
    ptr = m.device_ptr(EMU)
    with pytest.raises(DeviceError, match="not in a device allocation"):
        EMU.htod(ptr, np.zeros(5, np.float32))


def test_function_moves_inputs_up_and_outputs_down():
    plan_fn = None
    with sn.graph_scope():
        x = sn.input("x", (4, 8))
        w = sn.param("w", (8,), filler=sn.fillers.constant(0.5))
        plan_fn = sn.function([x], [sn.tanh(x * w), (x * x).sum()], backend="cuda-emu")
    xs = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    plan_fn(xs)
    runtime.reset_transfer_counts()
    y, s = plan_fn(xs)                     # the param stays on the device
    np.testing.assert_allclose(y, np.tanh(xs * 0.5), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s, (xs.astype(np.float64) ** 2).sum(), rtol=1e-5)
    c = counts()
    assert c["h2d_bytes"] == xs.nbytes and c["h2d_calls"] == 1
    assert c["d2h_bytes"] == y.nbytes + 4 and c["d2h_calls"] == 2


# ------------------------------------------------------------------ nets and solvers
def _lenet_solver(backend, batch):
    net = (MODELS / "bvlc_mnist" / "lenet_train_test.prototxt").read_text()
    text = (f"net_param {{ {net} }}\nbase_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 "
            'lr_policy: "inv" gamma: 0.0001 power: 0.75 display: 0 max_iter: 100 '
            "test_iter: 1 test_interval: 1000 test_initialization: false random_seed: 1\n")
    return sn.get_solver(text, backend=backend,
                         input_shapes={"data": (batch, 1, 28, 28), "label": (batch,)})


def _train(solver, rng, steps, counts_after=None):
    n = solver.net.blobs["data"].shape[0]
    losses, per_step = [], []
    for i in range(steps):
        if i == counts_after:
            runtime.reset_transfer_counts()
        solver.net.blobs["data"].data[...] = rng.random((n, 1, 28, 28), dtype=np.float32)
        solver.net.blobs["label"].data[...] = rng.integers(0, 10, n)
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    return losses


@pytest.mark.slow
def test_training_step_moves_only_the_batch_and_the_loss():
    batch, warm, timed = 16, 2, 3
    emu, cpu = _lenet_solver("cuda-emu", batch), _lenet_solver("cpu", batch)
    for name, blobs in cpu.net.params.items():       # the same starting weights
        for dst, src in zip(emu.net.params[name], blobs):
            dst.data[...] = src.data
    losses = _train(emu, np.random.default_rng(0), warm + timed, counts_after=warm)
    c = counts()
    want = _train(cpu, np.random.default_rng(0), warm + timed)
    batch_bytes = batch * 28 * 28 * 4 + batch * 4
    assert c["h2d_bytes"] / timed <= 1.05 * batch_bytes, c
    assert c["d2h_bytes"] / timed <= 64 + 4, c      # the loss Python reads
    np.testing.assert_allclose(losses, want, rtol=2e-4)
    for name, blobs in cpu.net.params.items():
        for a, b in zip(emu.net.params[name], blobs):
            np.testing.assert_allclose(a.data, b.data, rtol=2e-4, atol=2e-6)


def test_test_nets_share_the_train_nets_param_memory():
    solver = _lenet_solver("cpu", 4)
    test = solver.test_nets[0]
    for name, blobs in solver.net.params.items():
        for a, b in zip(blobs, test.params[name]):
            assert a.data_mem is b.data_mem
    rng = np.random.default_rng(1)
    _train(solver, rng, 1)
    np.testing.assert_array_equal(test.params["conv1"][0].data,
                                  solver.net.params["conv1"][0].data)


@pytest.mark.slow
def test_deploy_forward_moves_the_input_and_the_output():
    path = MODELS / "mnist_input_shape" / "lenet.prototxt"
    shapes = {"data": (1, 1, 28, 28)}
    emu = sn.Net(str(path), sn.TEST, backend="cuda-emu", input_shapes=shapes)
    cpu = sn.Net(str(path), sn.TEST, backend="cpu", input_shapes=shapes)
    for name, blobs in cpu.params.items():
        for dst, src in zip(emu.params[name], blobs):
            dst.data[...] = src.data
    x = np.random.default_rng(2).random((1, 1, 28, 28), dtype=np.float32)
    emu.forward(data=x)                       # warm-up: the weights go up once
    runtime.reset_transfer_counts()
    out = emu.forward(data=x)
    c = counts()
    (name,) = out
    assert c["h2d_bytes"] <= 1.05 * x.nbytes, c
    assert c["d2h_bytes"] <= out[name].nbytes + 64, c
    want = cpu.forward(data=x)
    np.testing.assert_allclose(out[name], want[name], rtol=1e-5, atol=1e-6)
    runtime.reset_transfer_counts()
    inner = emu.blobs["pool1"].data
    assert counts()["d2h_bytes"] == inner.nbytes and counts()["h2d_bytes"] == 0
    np.testing.assert_allclose(inner, cpu.blobs["pool1"].data, rtol=1e-5, atol=1e-6)
