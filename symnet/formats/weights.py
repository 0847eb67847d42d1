"""Trained weights: .caffemodel files (binary NetParameter, or Caffe's HDF5 form) into a
Net's parameter blobs and back.

Blobs are matched to layers by name, as Caffe's CopyTrainedLayersFrom does: layers of
the file missing from the net are ignored, layers of the net missing from the file
keep their fillers, and a blob whose shape differs is an error naming the layer and
both shapes. Legacy 4-D blobs match a shape that pads to the same four dims. A file
whose name ends in ``.h5`` or that starts with the HDF5 signature is read as Caffe's
Net::ToHDF5 writes it: group ``data``, a group per layer, a dataset per blob named by
its index.

Loading is all or nothing: every blob is checked and converted before any is written
(:func:`check_trained_layers` does that part alone), and a file that holds no weights
for any layer of the net (an empty file, another net's weights) is an error listing
what the net needs. A file that cannot be read or decoded is a :class:`WeightsError`
(or a PrototxtError for a broken protobuf), both SymnetErrors.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import SymnetError
from . import prototxt, upgrade
from .proto import caffe_pb2

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class WeightsError(SymnetError, ValueError):
    """A .caffemodel does not fit the net, or cannot be read."""


def _legacy4(shape):
    if len(shape) > 4:
        return None
    return (1,) * (4 - len(shape)) + tuple(shape)


def proto_shape(blob_proto):
    """(shape, legacy) of a BlobProto as Caffe's Blob::FromProto reads it: the 4-D
    num/channels/height/width when any of them is set (legacy), else ``shape.dim``."""
    legacy = any(blob_proto.HasField(f) for f in ("num", "channels", "height", "width"))
    if legacy:
        return (blob_proto.num, blob_proto.channels, blob_proto.height,
                blob_proto.width), True
    return tuple(blob_proto.shape.dim), False


def shape_fits(target_shape, shape, legacy):
    """Whether a stored blob of ``shape`` loads into a blob of ``target_shape``."""
    target_shape, shape = tuple(target_shape), tuple(shape)
    return shape == target_shape or (legacy and _legacy4(target_shape) == shape)


def is_hdf5(path) -> bool:
    """The file's name ends in .h5 (Caffe's test) or it starts with the HDF5 signature."""
    path = os.fspath(path)
    if path.endswith(".h5"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except OSError:
        return False


def check_trained_layers(net, path):
    """[(blob, array)]: the net's blobs and the values the file holds for them, every
    one checked; nothing is written. Raises WeightsError / PrototxtError."""
    path = os.fspath(path)
    if is_hdf5(path):
        loads = check_hdf5_layers(net, path)
        held_what = "groups in 'data'"
    else:
        loads, held = _check_binary(net, path)
        held_what = None
    if not loads and any(layer.blobs for layer in net._layers):
        needed = [n for n, l in zip(net._layer_names, net._layers) if l.blobs]
        try:
            size = f"{os.path.getsize(path)} bytes; "
        except OSError:
            size = ""
        if held_what is None:
            held_text = f"layers with weights in the file: {', '.join(held) or 'none'}"
        else:
            held_text = "no group of a layer of the net in 'data'"
        raise WeightsError(f"{path}: holds no weights for this net ({size}{held_text}); "
                           f"the net's layers with weights: {', '.join(needed)}")
    return loads


def write_trained_layers(loads):
    """Write what :func:`check_trained_layers` returned."""
    for blob, array in loads:
        blob.data[...] = array.reshape(blob.shape)


def copy_trained_layers(net, path):
    write_trained_layers(check_trained_layers(net, path))     # all checked: now written


def _check_binary(net, path):
    source = prototxt.read_net_binary(path)       # PrototxtError when broken
    try:
        source, _ = upgrade.upgrade_net(source)
    except SymnetError as e:
        raise WeightsError(f"{path}: {e}") from None
    except Exception as e:       # an old-format message the upgrader cannot take
        raise WeightsError(f"{path}: cannot bring the NetParameter up to date "
                           f"({type(e).__name__}: {e})") from None
    targets = dict(zip(net._layer_names, net._layers))
    loads = []
    held = []
    for lp in source.layer:
        if len(lp.blobs):
            held.append(lp.name)
        target = targets.get(lp.name)
        if target is None or not len(lp.blobs):
            continue
        if len(lp.blobs) != len(target.blobs):
            raise WeightsError(f"{path}: layer '{lp.name}' ({target.type}) has "
                               f"{len(lp.blobs)} blobs in the file, the net expects "
                               f"{len(target.blobs)}")
        for j, (bp, blob) in enumerate(zip(lp.blobs, target.blobs)):
            shape, legacy = proto_shape(bp)
            if not shape_fits(blob.shape, shape, legacy):   # before any conversion
                raise WeightsError(f"{path}: layer '{lp.name}' ({target.type}) blob {j}: "
                                   f"the file has shape {list(shape)}, the net "
                                   f"expects {list(blob.shape)}")
            try:
                array = prototxt.blob_to_array(bp)
            except SymnetError as e:
                raise WeightsError(f"{path}: layer '{lp.name}' ({target.type}) blob {j}: "
                                   f"{e}") from None
            loads.append((blob, array))
    return loads, held


def _h5py():
    try:
        import h5py
    except ImportError:
        raise WeightsError("reading HDF5 weights needs h5py: pip install "
                           "'symnet[data]'") from None
    return h5py


def hdf5_array(h5py, node, shape, where):
    """The float32 values of HDF5 dataset ``node``, which must hold numbers of
    ``shape`` (checked before reading)."""
    if not isinstance(node, h5py.Dataset):
        raise WeightsError(f"{where} is a {type(node).__name__}, expected a dataset")
    if node.dtype.kind not in "fiu":
        raise WeightsError(f"{where} holds {node.dtype}, expected numbers")
    if node.shape != tuple(shape):
        raise WeightsError(f"{where} has shape {list(node.shape or ())}, expected "
                           f"{list(shape)}")
    return np.asarray(node[()], dtype=np.float32).reshape(shape)


def check_hdf5(path):
    """The HDF5 file's superblock is sound (symnet.data.formats.check_hdf5_file): a
    truncated or foreign file is refused before the HDF5 library reads it."""
    from ..data.formats import check_hdf5_file
    check_hdf5_file(path)


def check_hdf5_layers(net, path):
    """[(blob, array)] from Caffe's HDF5 weights (group ``data``, a group per layer, a
    dataset per blob), every one checked; nothing is written."""
    h5py = _h5py()
    try:
        check_hdf5(path)                  # the superblock, before the library opens it
        f = h5py.File(path, "r")
    except Exception as e:
        raise WeightsError(f"{path}: not a readable HDF5 file ({type(e).__name__}: "
                           f"{e})") from None
    try:
        with f:
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                raise WeightsError(f"{path}: no group 'data' (not weights written by "
                                   "Caffe's Net::ToHDF5 or Net.save_hdf5)")
            targets = dict(zip(net._layer_names, net._layers))
            loads = []
            for name in data.keys():
                target = targets.get(name)
                if target is None or not target.blobs:
                    continue
                group = data[name]
                where = f"{path}: layer '{name}' ({target.type})"
                if not isinstance(group, h5py.Group):
                    raise WeightsError(f"{where}: 'data/{name}' is a "
                                       f"{type(group).__name__}, expected a group")
                stored = sorted(group.keys())
                expected = [str(j) for j in range(len(target.blobs))]
                if stored != sorted(expected):
                    raise WeightsError(f"{where}: the file has blobs {stored}, the net "
                                       f"expects {expected}")
                for j, blob in enumerate(target.blobs):
                    loads.append((blob, hdf5_array(h5py, group[str(j)], blob.shape,
                                                   f"{where} blob {j}")))
            return loads
    except SymnetError:
        raise
    except Exception as e:      # a damaged file: h5py's OSError, KeyError, ...
        raise WeightsError(f"{path}: cannot read the HDF5 weights ({type(e).__name__}: "
                           f"{e})") from None


def net_to_proto(net, with_blobs=True):
    """A NetParameter of the net's layers (current format) with their blobs."""
    out = caffe_pb2.NetParameter()
    out.name = net.name
    for layer in net._layers:
        lp = out.layer.add()
        if layer.source is not None:
            lp.CopyFrom(layer.source)
        lp.name, lp.type = layer.name, layer.type
        del lp.blobs[:]
        if with_blobs:
            for blob in layer.blobs:
                lp.blobs.append(prototxt.array_to_blob(np.ascontiguousarray(blob.read_data())))
    return out


def save_net(net, path):
    """Write the net's weights as a .caffemodel (atomically)."""
    prototxt.write_net_binary(net_to_proto(net), os.fspath(path))
