"""The cpu backend's plan runner (one call into the module per run of kernel steps,
small work on one thread) and the executor's reuse of the previous run's binding:
results against the NumPy reference, whatever steps run serially and whichever
memories a run is given."""
from __future__ import annotations

import numpy as np
import pytest

import symnet as sn
from symnet.runtime import cpu
from symnet.runtime.memory import SyncedMemory


def graph():
    """Convolution (its GEMM), pooling, a matmul, elementwise and a reduction: kernels
    with pointer, long and float arguments."""
    x = sn.input("x", (2, 3, 10, 10))
    w = sn.input("w", (4, 3, 3, 3))
    v = sn.input("v", (100, 5))
    c = sn.tanh(sn.conv2d(x, w, pad=1)) * 0.5 + 0.25
    p = sn.max_pool2d(c, 2)
    m = sn.matmul(sn.reshape(p, (2, 100)), v)
    e = sn.exp(m - m.max(1, keepdims=True))
    return [x, w, v], [c, p, e / e.sum(1, keepdims=True)]


def arrays(seed):
    r = np.random.default_rng(seed)
    return [r.standard_normal((2, 3, 10, 10)).astype(np.float32),
            r.standard_normal((4, 3, 3, 3)).astype(np.float32),
            r.standard_normal((100, 5)).astype(np.float32)]


def reference(seed):
    ins, outs = graph()
    return sn.function(ins, outs, backend="numpy")(*arrays(seed))


def check(got, want):
    for g, w in zip(got, want):
        g = g.host_read() if isinstance(g, SyncedMemory) else g
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("limits", [("0", "0"), ("1000000000", "0"), ("0", "1000000000"),
                                    ("3000", "0")])
def test_results_whatever_runs_serially(monkeypatch, limits):
    monkeypatch.setenv("SYMNET_SERIAL_WORK", limits[0])
    monkeypatch.setenv("SYMNET_SERIAL_PLAN_WORK", limits[1])
    ins, outs = graph()
    f = sn.function(ins, outs, backend="cpu")
    serial = list(f._impl.executor.backend.serial)
    kernels = [s.kind == "kernel" for s in f.plan.steps]
    if limits == ("0", "0"):
        assert not any(serial)
    if "1000000000" in limits:
        assert serial == [int(k) for k in kernels]
    for seed in (0, 1, 0):
        check(f(*arrays(seed)), reference(seed))
    # timed runs issue the steps one by one, with the same serial flags
    check(f(*arrays(2), timed=True), reference(2))
    assert f._impl.executor.timed_calls == 1


def test_one_call_per_run_of_kernels():
    ins, outs = graph()
    f = sn.function(ins, outs, backend="cpu")
    f(*arrays(0))
    ex = f._impl.executor
    assert all(s.kind == "kernel" for s in f.plan.steps) and len(f.plan.steps) > 3
    assert len(ex._runs) == 1


def test_serial_steps_rule():
    class Step:
        def __init__(self, kind, work):
            self.kind, self.bytes_read, self.bytes_written = kind, work, 0
            self.attrs = {"flops": work}

    class Plan:
        steps = [Step("kernel", 10), Step("host", 10**9), Step("kernel", 1000)]

    # works 20 and 2000 (bytes + flops); a host step never counts
    assert cpu.serial_steps(Plan, (0, 0)) == [False, False, False]
    assert cpu.serial_steps(Plan, (21, 0)) == [True, False, False]
    assert cpu.serial_steps(Plan, (0, 2021)) == [True, False, True]
    assert cpu.serial_steps(Plan, (0, 2020)) == [False, False, False]


def test_bad_serial_setting(monkeypatch):
    monkeypatch.setenv("SYMNET_SERIAL_WORK", "lots")
    with pytest.raises(ValueError, match="SYMNET_SERIAL_WORK='lots'"):
        cpu.serial_work()


def mems(seed):
    return [SyncedMemory.wrap(a) for a in arrays(seed)]


def out_mems():
    return [SyncedMemory((2, 4, 10, 10)), SyncedMemory((2, 4, 5, 5)), SyncedMemory((2, 5))]


def test_rebinding_between_runs():
    """Runs alternating between memories, NumPy arrays and changed host values: each
    result is that of its own arguments."""
    ins, outs = graph()
    f = sn.function(ins, outs, backend="cpu")
    a, b = mems(0), mems(1)
    oa, ob = out_mems(), out_mems()
    check(f(*a, out=oa), reference(0))
    check(f(*a, out=oa), reference(0))              # the same memories again
    check(f(*b, out=oa), reference(1))              # other inputs, same outputs
    check(oa, reference(1))
    check(f(*b, out=ob), reference(1))              # other outputs
    check(f(*arrays(0)), reference(0))              # arrays in, new arrays out
    a[0].host_write()[...] = arrays(2)[0]           # values changed in place
    want = sn.function(*graph(), backend="numpy")(arrays(2)[0], *arrays(0)[1:])
    check(f(*a, out=oa), want)


def test_memory_replaced_or_resized():
    ins, outs = graph()
    f = sn.function(ins, outs, backend="cpu")
    a, o = mems(0), out_mems()
    f(*a, out=o)
    a[0] = SyncedMemory.wrap(arrays(1)[0])          # another memory for x
    want = sn.function(*graph(), backend="numpy")(arrays(1)[0], *arrays(0)[1:])
    check(f(*a, out=o), want)
    o[2] = SyncedMemory((2, 6))                     # a destination of the wrong size
    with pytest.raises(sn.ShapeError):
        f(*a, out=o)
    o[2] = SyncedMemory((2, 5))
    check(f(*a, out=o), want)
    o[1].reshape((2, 4, 25))                        # the same memory, another shape
    with pytest.raises(sn.ShapeError, match="shape"):
        f(*a, out=o)
    o[1].reshape((2, 4, 5, 5))
    a[2].reshape((5, 100))                          # an input of the wrong shape
    with pytest.raises(sn.ShapeError, match="shape"):
        f(*a, out=o)
    a[2].reshape((100, 5))
    check(f(*a, out=o), want)


def test_net_forward_repeated_and_hooks():
    """A net's forward reuses the binding; hooks and forward(start=, end=) still see
    each layer's values, equal to a whole-net forward's."""
    proto = """
    input: "data" input_shape { dim: 2 dim: 1 dim: 12 dim: 12 }
    layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
            convolution_param { num_output: 3 kernel_size: 3
                                weight_filler { type: "gaussian" std: 0.3 } } }
    layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
    layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1"
            pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "fc" type: "InnerProduct" bottom: "p1" top: "fc"
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.3 } } }
    layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
    """
    r = np.random.default_rng(3)
    xs = [r.standard_normal((2, 1, 12, 12)).astype(np.float32) for _ in range(3)]
    ref = sn.Net(proto, sn.TEST, backend="numpy")
    net = sn.Net(proto, sn.TEST, backend="cpu")
    net.share_with(ref)
    for x in xs + xs[:1]:
        want = ref.forward(data=x)["prob"].copy()
        np.testing.assert_allclose(net.forward(data=x)["prob"], want, rtol=1e-5, atol=1e-6)
    seen = []
    relu = list(net.layer_dict).index("r1")        # after ReLU, in place on c1
    net.after_forward(lambda i: seen.append(net.blobs["c1"].data.copy()) if i == relu
                      else None)
    got = net.forward(data=xs[1])["prob"].copy()
    np.testing.assert_allclose(got, ref.forward(data=xs[1])["prob"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen[0], ref.blobs["c1"].data, rtol=1e-5, atol=1e-6)
    net._hooks["after_forward"].clear()
    net.forward(data=xs[2])
    out = net.forward(start="fc", end="fc")["fc"]
    ref.forward(data=xs[2])
    np.testing.assert_allclose(out, ref.blobs["fc"].data, rtol=1e-5, atol=1e-6)


def test_run_same_only_after_a_checked_run():
    """The shortcut that skips a Function's checks runs only with the memories of a run
    whose caller checked their shapes, and never once one of them was reshaped."""
    ins, outs = graph()
    f = sn.function(ins, outs, backend="cpu")
    a, o = mems(0), out_mems()
    assert f._impl.run_same(a, o) is None               # nothing ran yet
    f._impl.run(a, o)                                   # run directly: shapes unchecked
    assert f._impl.run_same(a, o) is None
    check(f(*a, out=o), reference(0))                   # checked by the Function
    for v in o:
        v.host_write()[...] = 7.0
    assert f._impl.run_same(a, o) == o
    check(o, reference(0))
    a[0].host_write()[...] = arrays(2)[0]               # new values, same memories
    want = sn.function(*graph(), backend="numpy")(arrays(2)[0], *arrays(0)[1:])
    check(f(*a, out=o), want)
    o[1].reshape((2, 4, 25))                            # same memory and size, new shape
    assert f._impl.run_same(a, o) is None
    with pytest.raises(sn.ShapeError, match="shape"):
        f(*a, out=o)
    o[1].reshape((2, 4, 5, 5))
    check(f(*a, out=o), want)
    b = mems(1)                                         # other memories
    assert f._impl.run_same(b, o) is None
    check(f(*b, out=o), reference(1))


NET = """
input: "data" input_shape { dim: 2 dim: 1 dim: 12 dim: 12 }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 3 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "fc" type: "InnerProduct" bottom: "c1" top: "fc"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.3 } } }
"""


def test_net_param_memory_replaced_or_written():
    """Param memories are looked up at every forward: one of the wrong shape is an
    error, a new one of the right shape is read, and values written into the kept one
    are seen."""
    r = np.random.default_rng(4)
    x = r.standard_normal((2, 1, 12, 12)).astype(np.float32)
    ref = sn.Net(NET, sn.TEST, backend="numpy")
    net = sn.Net(NET, sn.TEST, backend="cpu")
    for name in ("c1", "fc"):
        for b, rb in zip(net.params[name], ref.params[name]):
            b.data[...] = rb.data
    np.testing.assert_allclose(net.forward(data=x)["fc"], ref.forward(data=x)["fc"],
                               rtol=1e-5, atol=1e-6)
    w = net.params["fc"][0]
    kept = w.data_mem
    w.data_mem = SyncedMemory((4, 3 * 10 * 10 + 1))
    with pytest.raises(sn.ShapeError, match="shape"):
        net.forward(data=x)
    new = r.standard_normal(ref.params["fc"][0].shape).astype(np.float32)
    w.data_mem = SyncedMemory.wrap(new.copy())
    ref.params["fc"][0].data[...] = new
    np.testing.assert_allclose(net.forward(data=x)["fc"], ref.forward(data=x)["fc"],
                               rtol=1e-5, atol=1e-6)
    w.data_mem = kept
    kept.host_write()[...] = 2 * new
    ref.params["fc"][0].data[...] = 2 * new
    np.testing.assert_allclose(net.forward(data=x)["fc"], ref.forward(data=x)["fc"],
                               rtol=1e-5, atol=1e-6)


def test_net_without_chains_to_fold_ignores_the_fold_setting(monkeypatch):
    r = np.random.default_rng(5)
    xs = [r.standard_normal((2, 1, 12, 12)).astype(np.float32) for _ in range(3)]
    ref = sn.Net(NET, sn.TEST, backend="numpy")
    net = sn.Net(NET, sn.TEST, backend="cpu")
    net.share_with(ref)
    for x, fold in zip(xs, ("0", "1", "0")):
        monkeypatch.setenv("SYMNET_FOLD_BN", fold)
        np.testing.assert_allclose(net.forward(data=x)["fc"], ref.forward(data=x)["fc"],
                                   rtol=1e-5, atol=1e-6)
    assert len(net._fns) == 1


def test_dropped_views_are_forgotten_kept_ones_count():
    """``exposed`` views dropped unread do not pile up (a net's outputs are taken at
    every forward, their version never read); a kept one still makes every version
    read a new one, and once dropped the version is stable again."""
    mem = SyncedMemory((3,))
    for _ in range(1000):
        mem.exposed()[...] = 1.0
    assert len(mem._exposed) <= 32
    v = mem.version
    assert mem.version == v
    kept = mem.exposed()
    for _ in range(100):
        mem.exposed()
    assert len(mem._exposed) <= 32
    first = mem.version
    kept[0] = 5.0                                   # a write through the kept view
    assert mem.version != first
    assert mem.host_read()[0] == 5.0
    del kept
    v = mem.version
    assert mem.version == v
