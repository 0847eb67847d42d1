"""Property-based fuzzing (hypothesis) of the readers of Caffe files: prototxt text
(nets and solvers, read as bytes and from files) and .binaryproto blobs (mean files,
pycaffe's BlobProtoVector strings). Whatever the bytes, a reader either returns a
result that is consistent with its input or raises one of symnet's own exceptions (a
SymnetError); nothing else may escape.

The seeded mutations of tests/caffe/test_prototxt_fuzz.py cover fixed cases; here
hypothesis generates and shrinks: token soups from the prototxt grammar, splices of real
model files, and protobuf wire-format messages built field by field. Runs are
derandomized (the same examples on every run) and small (about 200 examples each).
"""
import os
import pathlib
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symnet.caffe import io as caffe_io
from symnet.data import DataError
from symnet.data.transform import load_mean_file
from symnet.errors import SymnetError
from symnet.formats import prototxt
from symnet.formats.prototxt import PrototxtError, parse_net, parse_solver
from symnet.formats.upgrade import upgrade_net, upgrade_solver

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

MODELS = pathlib.Path(__file__).parents[1] / "data" / "models"
FILES = ["bvlc_mnist/lenet_train_test.prototxt", "mnist_v1/lenet.prototxt",
         "bvlc_pycaffe/linreg.prototxt", "mtcnn/det1.prototxt",
         "bvlc_mnist/lenet_consolidated_solver.prototxt"]
CORPUS = [(MODELS / f).read_bytes() for f in FILES]


def only_symnet_errors(call, *args):
    """call(*args); a SymnetError is fine, any other exception fails the test."""
    try:
        return call(*args)
    except SymnetError:
        return None


# ----------------------------------------------------------------------------- prototxt

WORDS = ["layer", "layers", "name", "type", "bottom", "top", "convolution_param",
         "num_output", "kernel_size", "pad", "stride", "group", "weight_filler",
         "input", "input_dim", "input_shape", "dim", "include", "phase", "TRAIN",
         "TEST", "pooling_param", "pool", "MAX", "loss_weight", "param", "lr_mult",
         "net", "net_param", "base_lr", "solver_type", "SGD", "test_iter", "max_iter",
         "transform_param", "mean_file", "data_param", "source", "backend", "LMDB",
         "true", "false", "inf", "nan", "blobs", "shape", "data", "double_data",
         "python_param", "param_str", "module", "unknown_field", "layer_param"]
PUNCT = ["{", "}", "<", ">", "[", "]", ":", ",", ";", "\n", " ", "\t", "#", "\\", "-",
         "\"", "'", "\0", "\r", "é", "\ufeff"]
NUMBERS = st.one_of(
    st.integers(-2**70, 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0x7fffffff", "0xFFFFFFFFFFFFFFFF1", "017", "09", "1e-3", "2.5f",
                     "1e99999", "-0", ".5", "1.", "0x", "1e", "+1", "--1", "-inf"]))
STRINGS = st.text(max_size=12).map(lambda s: '"' + s.replace('"', '\\"') + '"')
TOKENS = st.one_of(st.sampled_from(WORDS), st.sampled_from(PUNCT), NUMBERS, STRINGS)


@st.composite
def token_soup(draw):
    tokens = draw(st.lists(TOKENS, max_size=60))
    return "".join(t if t in PUNCT else t + " " for t in tokens)


@st.composite
def spliced_model(draw):
    """A real model file with a few byte ranges cut, repeated or replaced."""
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data)))
        j = draw(st.integers(i, min(len(data), i + 40)))
        op = draw(st.sampled_from(["cut", "repeat", "replace", "truncate"]))
        if op == "cut":
            del data[i:j]
        elif op == "repeat":
            data[i:i] = data[i:j] * draw(st.integers(1, 3))
        elif op == "replace":
            data[i:j] = draw(st.binary(max_size=8) | TOKENS.map(str.encode))
        else:
            del data[i:]
    return bytes(data)


PROTOTXT_BYTES = st.one_of(st.binary(max_size=400), token_soup().map(str.encode),
                           spliced_model())


def check_prototxt(data):
    for parse, upgrade in ((parse_net, upgrade_net), (parse_solver, upgrade_solver)):
        message = only_symnet_errors(lambda d: parse(d, filename="fuzz.prototxt"), data)
        if message is not None:
            only_symnet_errors(upgrade, message)
            prototxt.to_text(message)      # what was read can be written back


@FUZZ
@given(PROTOTXT_BYTES)
def test_prototxt_bytes_raise_only_symnet_errors(data):
    check_prototxt(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    check_prototxt(text)


@FUZZ
@given(PROTOTXT_BYTES, st.integers(1, 600))
def test_prototxt_files_raise_only_symnet_errors(data, cap):
    """Read from a file under a small SYMNET_MAX_TEXT_BYTES: a file over the cap is
    a PrototxtError naming the limit, one within it parses as the same bytes do."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fuzz.prototxt")
        with open(path, "wb") as f:
            f.write(data)
        saved = os.environ.get("SYMNET_MAX_TEXT_BYTES")
        os.environ["SYMNET_MAX_TEXT_BYTES"] = str(cap)
        try:
            try:
                from_file = parse_net(path)
            except PrototxtError as e:
                from_file = e
        finally:
            if saved is None:
                del os.environ["SYMNET_MAX_TEXT_BYTES"]
            else:
                os.environ["SYMNET_MAX_TEXT_BYTES"] = saved
    if len(data) > cap:
        assert isinstance(from_file, PrototxtError)
        assert f"limit of {cap} bytes" in str(from_file) and path in str(from_file)
        return
    try:
        from_bytes = parse_net(data)
    except PrototxtError as e:
        assert isinstance(from_file, PrototxtError), from_file
        assert str(e).split(":", 1)[1] == str(from_file).split(":", 1)[1]
    else:
        assert from_bytes == from_file


# ----------------------------------------------------------------------------- binaryproto

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, wire, payload):
    return varint(number << 3 | wire) + payload


def length_delimited(number, body):
    return field(number, 2, varint(len(body)) + body)


INTS = st.one_of(st.integers(-3, 8), st.integers(-2**63, 2**64 - 1),
                 st.sampled_from([2**31 - 1, 2**31, 2**32, 2**40, 2**62]))


@st.composite
def blob_fields(draw):
    """One BlobProto field on the wire: mostly well-formed, sometimes not."""
    kind = draw(st.sampled_from(["legacy", "shape", "floats", "doubles", "unpacked",
                                 "junk", "wrong_wire"]))
    if kind == "legacy":                      # num / channels / height / width
        return field(draw(st.integers(1, 4)), 0, varint(draw(INTS)))
    if kind == "shape":
        dims = draw(st.lists(INTS, max_size=5))
        body = length_delimited(1, b"".join(varint(d) for d in dims))
        if draw(st.booleans()):                       # unpacked dims
            body = b"".join(field(1, 0, varint(d)) for d in dims)
        return length_delimited(7, body)
    if kind == "floats":                      # data / diff, packed
        values = draw(st.lists(st.floats(width=32), max_size=30))
        return length_delimited(draw(st.sampled_from([5, 6])),
                                struct.pack(f"<{len(values)}f", *values))
    if kind == "doubles":                     # double_data / double_diff, packed
        values = draw(st.lists(st.floats(), max_size=30))
        return length_delimited(draw(st.sampled_from([8, 9])),
                                struct.pack(f"<{len(values)}d", *values))
    if kind == "unpacked":
        return field(5, 5, struct.pack("<f", draw(st.floats(width=32))))
    if kind == "junk":                        # a bad length, or raw bytes
        return field(draw(st.integers(1, 12)), 2, varint(draw(st.integers(0, 2**40))) +
                     draw(st.binary(max_size=20)))
    return field(draw(st.integers(1, 9)), draw(st.sampled_from([0, 1, 2, 5, 3, 4, 6, 7])),
                 draw(st.binary(max_size=12)))


@st.composite
def binaryproto_bytes(draw):
    choice = draw(st.sampled_from(["fields", "valid", "raw"]))
    if choice == "raw":
        return draw(st.binary(max_size=300))
    if choice == "valid":                 # a real blob, then truncated or flipped
        shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=4))
        array = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
        blob = prototxt.array_to_blob(array, legacy=draw(st.booleans()) and len(shape) <= 4)
        data = bytearray(blob.SerializeToString())
        if data and draw(st.booleans()):
            del data[draw(st.integers(0, len(data) - 1)):]
        if data and draw(st.booleans()):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    return b"".join(draw(st.lists(blob_fields(), max_size=6)))


def check_blob_result(array, path):
    """A blob that was read has float32 values and the shape its fields give."""
    blob = prototxt.caffe_pb2.BlobProto()
    blob.ParseFromString(pathlib.Path(path).read_bytes())
    assert array.dtype == np.float32
    legacy = any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
    shape = (blob.num, blob.channels, blob.height, blob.width) if legacy \
        else tuple(blob.shape.dim)
    assert array.shape == shape


@FUZZ
@given(binaryproto_bytes())
def test_binaryproto_bytes_raise_only_symnet_errors(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mean.binaryproto")
        with open(path, "wb") as f:
            f.write(data)
        array = only_symnet_errors(prototxt.read_blobproto, path)
        if array is not None:
            check_blob_result(array, path)
        try:
            mean = load_mean_file(path)
        except DataError:
            pass
        else:
            assert mean.ndim == 3 and mean.dtype == np.float32
    vector = length_delimited(1, data)
    arrays = only_symnet_errors(caffe_io.blobprotovector_str_to_arraylist, vector)
    if arrays is not None:
        assert len(arrays) == 1
    only_symnet_errors(caffe_io.blobprotovector_str_to_arraylist, data)


def _small_caffemodel():
    net = parse_net(CORPUS[2])
    for layer in net.layer:
        layer.blobs.add().CopyFrom(prototxt.array_to_blob(np.ones((2, 3), np.float32)))
    return net.SerializeToString()


CAFFEMODEL = _small_caffemodel()


@st.composite
def caffemodel_bytes(draw):
    data = bytearray(CAFFEMODEL)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["truncate", "flip", "insert"]))
        if op == "truncate":
            del data[i:]
            if not data:
                break
        elif op == "flip":
            data[i] = draw(st.integers(0, 255))
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8) |
                             blob_fields().map(lambda f: length_delimited(7, f)))
    return bytes(data)


@FUZZ
@given(st.one_of(caffemodel_bytes(), st.binary(max_size=200)))
def test_caffemodel_bytes_raise_only_symnet_errors(data):
    """The binary NetParameter reader (the first step of loading weights)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fuzz.caffemodel")
        with open(path, "wb") as f:
            f.write(data)
        net = only_symnet_errors(prototxt.read_net_binary, path)
    if net is not None:
        only_symnet_errors(upgrade_net, net)
        for layer in net.layer:
            for blob in layer.blobs:
                only_symnet_errors(prototxt.blob_to_array, blob)


def test_a_known_blob_reads_back():
    """The fuzz's own reference: a well-formed blob gives back its array."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.binaryproto")
        array = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) / 7
        prototxt.write_blobproto(array, path, legacy=True)
        np.testing.assert_array_equal(prototxt.read_blobproto(path), array)
        np.testing.assert_array_equal(load_mean_file(path), array[0])
    assert [a.shape for a in caffe_io.blobprotovector_str_to_arraylist(
        caffe_io.arraylist_to_blobprotovector_str([array[0], array[0, 0]]))] == \
        [(2, 3, 4), (3, 4)]


@pytest.mark.parametrize("dims", [[2**32, 2**32], [2**62, 4, 0], [2**63 - 1, 2],
                                  [2**40, 2**40, 2**40]])
def test_huge_blob_shapes_are_prototxt_errors(dims, tmp_path):
    """Dimensions whose product overflows 64 bits must not pass the count check."""
    blob = prototxt.caffe_pb2.BlobProto()
    blob.shape.dim.extend(dims)
    path = tmp_path / "huge.binaryproto"
    path.write_bytes(blob.SerializeToString())
    count = int(np.prod([int(d) for d in dims], dtype=object))
    if count == 0:       # no values, but numpy cannot make an array of that shape
        with pytest.raises(PrototxtError, match="cannot be held in memory"):
            prototxt.read_blobproto(path)
    else:
        with pytest.raises(PrototxtError, match=f"\\({count} values\\) holds 0"):
            prototxt.read_blobproto(path)
