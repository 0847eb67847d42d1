"""Binary files: .caffemodel NetParameters and .binaryproto blobs, written and read."""
import os

import numpy as np
import pytest

from symnet.formats.proto import caffe_pb2
from symnet.formats.prototxt import (PrototxtError, array_to_blob, blob_to_array,
                                     parse_net, read_blobproto, read_net_binary,
                                     write_blobproto, write_net_binary)
from symnet.formats.upgrade import upgrade_net


def make_model(rng):
    net = parse_net("""
        name: "tiny"
        layer { name: "data" type: "Input" top: "data"
                input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
                param { lr_mult: 1 } param { lr_mult: 2 }
                convolution_param { num_output: 4 kernel_size: 3 } }
        layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip"
                inner_product_param { num_output: 5 } }
    """)
    conv, ip = net.layer[1], net.layer[2]
    conv.blobs.append(array_to_blob(rng.standard_normal((4, 3, 3, 3)).astype(np.float32)))
    conv.blobs.append(array_to_blob(rng.standard_normal(4).astype(np.float32)))
    ip.blobs.append(array_to_blob(rng.standard_normal((5, 144)).astype(np.float32)))
    ip.blobs.append(array_to_blob(rng.standard_normal(5).astype(np.float32)))
    return net


def test_caffemodel_round_trip(tmp_path):
    net = make_model(np.random.default_rng(0))
    path = tmp_path / "tiny.caffemodel"
    write_net_binary(net, path)
    back = read_net_binary(path)
    assert back == net
    assert path.read_bytes() == net.SerializeToString()
    w = blob_to_array(back.layer[1].blobs[0])
    assert w.shape == (4, 3, 3, 3) and w.dtype == np.float32
    np.testing.assert_array_equal(w, blob_to_array(net.layer[1].blobs[0]))


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(b"old contents")
    write_net_binary(make_model(np.random.default_rng(1)), path)
    assert os.listdir(tmp_path) == ["m.caffemodel"]
    assert read_net_binary(path).name == "tiny"


def test_write_into_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(PrototxtError, match="cannot write"):
        write_net_binary(caffe_pb2.NetParameter(), tmp_path / "no" / "such.caffemodel")


def test_write_refuses_missing_required_fields(tmp_path):
    net = parse_net('layer { name: "c" type: "Clip" clip_param { min: 0 } }')
    with pytest.raises(PrototxtError, match="clip_param.max"):
        write_net_binary(net, tmp_path / "c.caffemodel")


def test_v1_caffemodel_round_trip_and_upgrade(tmp_path):
    net = parse_net("""
        layers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "y"
                 blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
    """)
    rng = np.random.default_rng(2)
    weights = rng.standard_normal((3, 4)).astype(np.float32)
    net.layers[0].blobs.append(array_to_blob(weights, legacy=True))
    path = tmp_path / "v1.caffemodel"
    write_net_binary(net, path)
    back = read_net_binary(path)
    assert back == net and len(back.layers) == 1
    up, _ = upgrade_net(back)
    assert up.layer[0].type == "InnerProduct"
    assert [(p.lr_mult, p.decay_mult) for p in up.layer[0].param] == [(1, 1), (2, 0)]
    np.testing.assert_array_equal(blob_to_array(up.layer[0].blobs[0]),
                                  weights.reshape(1, 1, 3, 4))


@pytest.mark.parametrize("shape", [(), (7,), (3, 4), (2, 3, 4), (2, 3, 4, 5),
                                   (1, 2, 3, 4, 5), (0, 3)])
def test_blob_round_trip_via_shape(shape):
    arr = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    blob = array_to_blob(arr)
    assert list(blob.shape.dim) == list(shape)
    back = blob_to_array(caffe_pb2.BlobProto.FromString(blob.SerializeToString()))
    assert back.shape == shape and back.dtype == np.float32
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("shape,legacy_shape", [((2, 3, 4, 5), (2, 3, 4, 5)),
                                                ((6, 7), (1, 1, 6, 7)),
                                                ((9,), (1, 1, 1, 9))])
def test_blob_round_trip_via_legacy_4d_fields(shape, legacy_shape):
    arr = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    blob = array_to_blob(arr, legacy=True)
    assert not blob.HasField("shape")
    assert (blob.num, blob.channels, blob.height, blob.width) == legacy_shape
    back = blob_to_array(caffe_pb2.BlobProto.FromString(blob.SerializeToString()))
    np.testing.assert_array_equal(back, arr.reshape(legacy_shape))


def test_legacy_fields_win_over_shape_as_in_caffe():
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3)
    blob.shape.dim.extend([6])
    blob.data.extend(range(6))
    assert blob_to_array(blob).shape == (1, 2, 1, 3)


def test_blob_double_data():
    arr = np.random.default_rng(5).standard_normal((3, 2))
    blob = array_to_blob(arr, double=True)
    assert len(blob.double_data) == 6 and len(blob.data) == 0
    back = blob_to_array(caffe_pb2.BlobProto.FromString(blob.SerializeToString()))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, arr.astype(np.float32))
    exact = blob_to_array(blob, dtype=np.float64)
    np.testing.assert_array_equal(exact, arr)


def test_blob_written_by_hand_like_old_pycaffe():
    blob = caffe_pb2.BlobProto(num=2, channels=1, height=1, width=2)
    blob.data.extend([1, 2, 3, 4])
    np.testing.assert_array_equal(blob_to_array(blob), [[[[1, 2]]], [[[3, 4]]]])


def test_blob_count_mismatch_is_an_error():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([1, 2, 3])
    with pytest.raises(PrototxtError, match=r"\[2, 3\].*6 values.*holds 3"):
        blob_to_array(blob)


def test_large_blob_is_fast():
    import time

    from google.protobuf.internal import api_implementation
    if api_implementation.Type() == "python":
        pytest.skip("the pure-Python protobuf runtime decodes large blobs slowly")
    arr = np.arange(4_000_000, dtype=np.float32)
    t0 = time.perf_counter()
    blob = array_to_blob(arr.reshape(2000, 2000))
    back = blob_to_array(blob)
    assert time.perf_counter() - t0 < 2.0
    np.testing.assert_array_equal(back.ravel(), arr)


def test_binaryproto_mean_round_trip(tmp_path):
    mean = np.random.default_rng(6).uniform(0, 255, (1, 3, 16, 16)).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    write_blobproto(mean, path)
    back = read_blobproto(path)
    assert back.dtype == np.float32 and back.shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(back, mean)
    write_blobproto(mean[0], path, legacy=True)  # as Caffe's compute_image_mean
    blob = caffe_pb2.BlobProto.FromString(path.read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 16, 16)
    np.testing.assert_array_equal(read_blobproto(path), mean)


def test_binaryproto_written_by_caffe_layout(tmp_path):
    # compute_image_mean writes num=1, channels, height, width and float data.
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2)
    blob.data.extend(np.arange(12, dtype=np.float32))
    path = tmp_path / "m.binaryproto"
    path.write_bytes(blob.SerializeToString())
    np.testing.assert_array_equal(read_blobproto(path),
                                  np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2))


@pytest.mark.parametrize("data", [
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # broken varint
    b"\x0a\x80\x80\x80\x80\x08",                       # length past the end
    b"\x0f",                                           # wire type 7
    bytes(range(256)) * 4,
], ids=["varint", "length", "wiretype", "ramp"])
def test_garbage_binary_names_the_file(tmp_path, data):
    path = tmp_path / "garbage.caffemodel"
    path.write_bytes(data)
    with pytest.raises(PrototxtError) as info:
        read_net_binary(path)
    assert str(path) in str(info.value)
    with pytest.raises(PrototxtError) as info:
        read_blobproto(path)
    assert str(path) in str(info.value)


def test_text_given_to_binary_reader_says_so(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text('name: "x"\nlayer { name: "a" type: "ReLU" }\n')
    with pytest.raises(PrototxtError, match="looks like text"):
        read_net_binary(path)


def test_binary_missing_file(tmp_path):
    with pytest.raises(PrototxtError, match="no such file"):
        read_net_binary(tmp_path / "none.caffemodel")


def test_binary_fuzz_never_crashes(tmp_path):
    rng = np.random.default_rng(7)
    good = make_model(rng).SerializeToString()
    path = tmp_path / "f.caffemodel"
    cases = [good[:n] for n in range(0, len(good), 97)]
    for _ in range(200):
        mutated = bytearray(good)
        for i in rng.integers(0, len(good), size=int(rng.integers(1, 8))):
            mutated[i] = int(rng.integers(0, 256))
        cases.append(bytes(mutated))
    cases += [rng.bytes(int(rng.integers(1, 400))) for _ in range(200)]
    for data in cases:
        path.write_bytes(data)
        try:
            net = read_net_binary(path)
        except PrototxtError as e:
            assert str(path) in str(e)
            continue
        try:
            upgrade_net(net)
        except PrototxtError:
            pass
