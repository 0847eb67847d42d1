"""Fuzzing the readers of saved state: mutated .caffemodel bytes (of LeNet's weights,
written by symnet), HDF5 weights, .solverstate bytes (binary and Caffe's HDF5 form).
Whatever the bytes, only symnet's own errors (SymnetError) escape, and after an error
the net's weights -- and the solver's iteration, histories and data positions -- are as
they were."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import symnet as sn
from symnet import solver as S
from symnet.errors import SymnetError

HERE = os.path.dirname(os.path.abspath(__file__))
LENET = os.path.join(HERE, "..", "data", "models", "bvlc_mnist", "lenet.prototxt")

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _field_starts(data: bytes):
    """Offsets of the top-level fields of a protobuf message (where a mutation hits
    the structure rather than float values)."""
    out, pos = [], 0
    while pos < len(data):
        out.append(pos)
        key, pos = S._varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = S._varint(data, pos)
        elif wire == 2:
            n, pos = S._varint(data, pos)
            pos += n
        else:
            pos += {1: 8, 5: 4}[wire]
    return out


def mutate_bytes(data, original: bytes, hot):
    """``original`` truncated, with bytes flipped or overwritten (often at the offsets in
    ``hot``), with random bytes inserted, or replaced by random bytes. ``data`` is
    hypothesis' ``st.data()``: only the small choices are drawn (and reported)."""
    kind = data.draw(st.sampled_from(["truncate", "flip", "insert", "random", "mixed"]),
                     label="kind")
    if kind == "random":
        return data.draw(st.binary(max_size=300), label="bytes")
    out = bytearray(original)
    n_edits = 1 if kind != "mixed" else data.draw(st.integers(2, 6), label="edits")
    for _ in range(n_edits):
        if data.draw(st.booleans(), label="near a field start"):
            pos = data.draw(st.sampled_from(hot), label="start") + \
                data.draw(st.integers(0, 24), label="offset")
        else:
            pos = data.draw(st.integers(0, len(out) - 1), label="pos")
        pos = min(pos, len(out) - 1)
        op = kind if kind != "mixed" else data.draw(
            st.sampled_from(["flip", "insert", "set"]), label="op")
        if op == "truncate":
            return bytes(out[:pos])
        if op == "flip":
            out[pos] ^= data.draw(st.integers(1, 255), label="xor")
        elif op == "set":
            out[pos] = data.draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, 0x08, 0x0A, 0x12]),
                                 label="byte")
        else:
            out[pos:pos] = data.draw(st.binary(min_size=1, max_size=16), label="insert")
    return bytes(out)


def _blob_edit(data, bp):
    """One change to a BlobProto that keeps the wire format valid."""
    op = data.draw(st.sampled_from(["dims", "legacy", "drop", "extend", "double", "clear",
                               "huge"]))
    if op == "dims":
        bp.ClearField("num"), bp.ClearField("channels")
        bp.ClearField("height"), bp.ClearField("width")
        bp.shape.dim[:] = data.draw(st.lists(st.integers(-3, 900), max_size=5))
    elif op == "legacy":
        for f in ("num", "channels", "height", "width"):
            if data.draw(st.booleans()):
                setattr(bp, f, data.draw(st.integers(-2, 600)))
    elif op == "drop":
        del bp.data[-data.draw(st.integers(1, 5)):]
    elif op == "extend":
        bp.data.extend([1.0] * data.draw(st.integers(1, 5)))
    elif op == "double":
        bp.double_data.extend(bp.data[:data.draw(st.integers(0, len(bp.data)))])
    elif op == "clear":
        bp.ClearField("data")
    else:
        bp.shape.dim[:] = [2 ** 40, 2 ** 40]


def mutate_net(data, original: bytes):
    """LeNet's NetParameter changed at the message level: blob shapes and values,
    layer names and types, blobs added or removed, old-format (V1) layers."""
    from symnet.formats.proto import caffe_pb2
    msg = caffe_pb2.NetParameter()
    msg.ParseFromString(original)
    with_blobs = [lp for lp in msg.layer if len(lp.blobs)]
    for _ in range(data.draw(st.integers(1, 3))):
        lp = with_blobs[data.draw(st.integers(0, len(with_blobs) - 1), label="layer")]
        op = data.draw(st.sampled_from(["blob", "blob", "rename", "type", "add", "remove",
                                   "v1"]))
        if not len(lp.blobs) and op in ("blob", "add", "remove"):
            lp.blobs.add()                  # an empty blob
        elif op == "blob":
            _blob_edit(data, lp.blobs[data.draw(st.integers(0, len(lp.blobs) - 1))])
        elif op == "rename":
            lp.name = data.draw(st.sampled_from([l.name for l in msg.layer] + ["", "x"]))
        elif op == "type":
            lp.type = data.draw(st.sampled_from(["", "Convolution", "InnerProduct", "ReLU",
                                            "NoSuchType"]))
        elif op == "add":
            lp.blobs.add().CopyFrom(lp.blobs[0])
        elif op == "remove":
            del lp.blobs[-1]
        else:
            v1 = msg.layers.add()
            v1.name = lp.name
            v1.type = data.draw(st.sampled_from([0, 4, 14, 18, 35, 39]))
            for bp in lp.blobs:
                v1.blobs.add().CopyFrom(bp)
            if data.draw(st.booleans()):
                del msg.layer[:]
    return msg.SerializeToString()


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 2 ** 130),
                        st.floats(allow_nan=True), st.text(max_size=6),
                        st.lists(st.integers(0, 9), max_size=3),
                        st.dictionaries(st.sampled_from(["type", "seed", "x"]),
                                        st.integers(-1, 3), max_size=2))


def _json_paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _json_paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _json_paths(v, path + (i,))


def mutate_state(data, original: bytes):
    """A symnet .solverstate changed at the message level: iter, current_step,
    learned_net, history blobs, and values anywhere in the resume data's JSON (set to
    other values or removed)."""
    import json
    from symnet.formats.proto import caffe_pb2
    msg = caffe_pb2.SolverState()
    msg.ParseFromString(original)
    extra = json.loads(S._top_level_field(original, S.EXTRA_FIELD))
    state = caffe_pb2.SolverState()            # the known fields only
    state.CopyFrom(msg)
    state.DiscardUnknownFields()
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        op = data.draw(st.sampled_from(["json", "json", "json", "json", "iter", "history",
                                        "learned_net"]), label="op")
        if op == "json":
            paths = [p for p in _json_paths(extra) if p]
            path = paths[data.draw(st.integers(0, len(paths) - 1), label="path")]
            parent = extra
            for k in path[:-1]:
                parent = parent[k]
            if isinstance(parent, dict) and data.draw(st.booleans(), label="remove"):
                del parent[path[-1]]
            else:
                parent[path[-1]] = data.draw(JSON_VALUES, label=f"value at {path}")
        elif op == "iter":
            setattr(state, data.draw(st.sampled_from(["iter", "current_step"])),
                    data.draw(st.integers(-3, 2 ** 31 - 1)))
        elif op == "history":
            i = data.draw(st.integers(0, len(state.history) - 1), label="blob")
            _blob_edit(data, state.history[i])
        else:
            state.learned_net = data.draw(st.sampled_from(
                ["", "nonexistent.caffemodel", state.learned_net + "x", "/", "."]))
    blob = json.dumps(extra).encode()
    return state.SerializeToString() + S._encode_varint(S.EXTRA_FIELD << 3 | 2) + \
        S._encode_varint(len(blob)) + blob


# --------------------------------------------------------------------------- weights

@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    d = tmp_path_factory.mktemp("lenet")
    net = sn.Net(LENET, phase="TEST", backend="cpu")
    path = str(d / "lenet.caffemodel")
    net.save(path)
    for i, (name, blobs) in enumerate(net.params.items()):      # other values in the net
        for b in blobs:
            b.data[...] = np.float32(i + 1)
    yield net, path, d
    net.close()


def _params(net):
    return [np.array(b.data) for blobs in net.params.values() for b in blobs]


def _set_params(net, values):
    for b, v in zip((b for blobs in net.params.values() for b in blobs), values):
        b.data[...] = v


def _load_or_symnet_error(net, path):
    before = _params(net)
    try:
        net.copy_from(path)
    except SymnetError:
        for a, b in zip(_params(net), before):
            np.testing.assert_array_equal(a, b)     # nothing written
        return False
    _set_params(net, before)
    return True


def test_lenet_caffemodel_loads_unmutated(lenet):
    """The fuzzed file is a real one: unmutated, it loads."""
    net, path, _ = lenet
    reference = sn.Net(LENET, phase="TEST", backend="cpu")
    reference.copy_from(path)
    before = _params(net)
    net.copy_from(path)
    for a, b in zip(_params(net), _params(reference)):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(before, _params(net)))
    _set_params(net, before)
    reference.close()


def test_fuzz_caffemodel_bytes(lenet):
    net, path, d = lenet
    original = open(path, "rb").read()
    hot = _field_starts(original)
    target = str(d / "fuzz.caffemodel")

    @FUZZ
    @given(st.data())
    def run(data):
        with open(target, "wb") as f:
            f.write(mutate_bytes(data, original, hot))
        _load_or_symnet_error(net, target)
    run()


def test_fuzz_caffemodel_messages(lenet):
    net, path, d = lenet
    original = open(path, "rb").read()
    target = str(d / "fuzz_msg.caffemodel")

    @FUZZ
    @given(st.data())
    def run(data):
        with open(target, "wb") as f:
            f.write(mutate_net(data, original))
        _load_or_symnet_error(net, target)
    run()


def test_fuzz_hdf5_weights_bytes(lenet):
    net, path, d = lenet
    h5 = str(d / "lenet.caffemodel.h5")
    reference = sn.Net(LENET, phase="TEST", backend="cpu")
    reference.copy_from(path)
    reference.save_hdf5(h5)
    reference.close()
    original = open(h5, "rb").read()
    before = _params(net)
    net.copy_from(h5)                             # unmutated, it loads the same values
    check = sn.Net(LENET, phase="TEST", backend="cpu")
    check.copy_from(path)
    for a, b in zip(_params(net), _params(check)):
        np.testing.assert_array_equal(a, b)
    check.close()
    _set_params(net, before)
    target = str(d / "fuzz.caffemodel.h5")
    hot = list(range(0, min(len(original), 4096), 64))

    @FUZZ
    @given(st.data())
    def run(data):
        with open(target, "wb") as f:
            f.write(mutate_bytes(data, original, hot))
        _load_or_symnet_error(net, target)
    run()


# --------------------------------------------------------------------------- solverstate

NET = """
name: "dummy"
layer { name: "dx" type: "DummyData" top: "x"
  dummy_data_param { shape { dim: 4 dim: 3 } data_filler { type: "gaussian" } } }
layer { name: "dy" type: "DummyData" top: "y"
  dummy_data_param { shape { dim: 4 dim: 2 } data_filler { type: "uniform" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


@pytest.fixture(scope="module")
def adam(tmp_path_factory):
    d = tmp_path_factory.mktemp("state")
    (d / "net.prototxt").write_text(NET)
    (d / "solver.prototxt").write_text(
        f'net: "{d / "net.prototxt"}"\nsnapshot_prefix: "{d / "s"}"\n'
        'base_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 100\ntype: "Adam"\n'
        "random_seed: 1701\nsnapshot_after_train: false\n")
    solver = sn.get_solver(str(d / "solver.prototxt"), backend="cpu")
    solver.step(3)
    _, state = solver.snapshot()
    solver.step(2)
    yield solver, state, d
    solver.close()


def _everything(solver):
    return (solver.iter, solver.current_step, solver.net.iteration,
            [np.array(b.data) for b, _, _ in solver.learnable_params()],
            [np.array(h) for h in solver.history],
            [f.state() for _, f in solver.net._feeders])


def _same(a, b):
    assert a[:3] == b[:3]
    for x, y in zip(a[3] + a[4], b[3] + b[4]):
        np.testing.assert_array_equal(x, y)
    assert a[5] == b[5]


def _restore_or_symnet_error(solver, path):
    before = _everything(solver)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", S.ResumeWarning)
            solver.restore(path)
    except SymnetError:
        _same(_everything(solver), before)
        return False
    return True


def test_fuzz_solverstate_bytes(adam):
    solver, state, d = adam
    original = open(state, "rb").read()
    assert _restore_or_symnet_error(solver, state)          # unmutated, it restores
    assert solver.iter == 3
    solver.step(1)
    hot = _field_starts(original)
    extra_at = original.rindex(b'{"data"')
    hot += list(range(extra_at, len(original), 7))          # the resume data's JSON
    target = str(d / "fuzz.solverstate")

    @FUZZ
    @given(st.data())
    def run(data):
        with open(target, "wb") as f:
            f.write(mutate_bytes(data, original, hot))
        if _restore_or_symnet_error(solver, target):
            solver.restore(state)           # back to a known state for the next one
            solver.step(1)
    run()


def test_fuzz_solverstate_messages(adam):
    solver, state, d = adam
    original = open(state, "rb").read()
    target = str(d / "fuzz_msg.solverstate")

    @FUZZ
    @given(st.data())
    def run(data):
        with open(target, "wb") as f:
            f.write(mutate_state(data, original))
        if _restore_or_symnet_error(solver, target):
            solver.restore(state)
            solver.step(1)
    run()


def test_fuzz_hdf5_solverstate_bytes(adam):
    h5py = pytest.importorskip("h5py")
    from symnet.formats.proto import caffe_pb2
    solver, state, d = adam
    msg = caffe_pb2.SolverState()
    msg.ParseFromString(open(state, "rb").read())
    h5 = str(d / "s.solverstate.h5")
    with h5py.File(h5, "w") as f:          # Caffe's SnapshotSolverStateToHDF5 layout
        f.create_dataset("iter", data=np.array([msg.iter], np.int32))
        f.create_dataset("learned_net", data=msg.learned_net.encode())
        f.create_dataset("current_step", data=np.array([msg.current_step], np.int32))
        g = f.create_group("history")
        for i, bp in enumerate(msg.history):
            g.create_dataset(str(i), data=np.array(bp.data, np.float32).reshape(
                tuple(bp.shape.dim)))
    original = open(h5, "rb").read()
    assert _restore_or_symnet_error(solver, h5)
    assert solver.iter == 3
    solver.step(1)
    target = str(d / "fuzz.solverstate.h5")
    hot = list(range(0, min(len(original), 4096), 32))

    @FUZZ
    @given(st.data())
    def run(data):
        with open(target, "wb") as f:
            f.write(mutate_bytes(data, original, hot))
        if _restore_or_symnet_error(solver, target):
            solver.restore(state)
            solver.step(1)
    run()
