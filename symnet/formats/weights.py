"""Trained weights: .caffemodel files into a Net's parameter blobs and back.

Blobs are matched to layers by name, as Caffe's CopyTrainedLayersFrom does: layers of
the file missing from the net are ignored, layers of the net missing from the file
keep their fillers, and a blob whose shape differs is an error naming the layer and
both shapes. Legacy 4-D blobs match a shape that pads to the same four dims. Loading is
all or nothing: every blob is checked before any is written, and a file that holds no
weights for any layer of the net (an empty file, another net's weights) is an error
listing what the net needs.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import SymnetError
from . import prototxt, upgrade
from .proto import caffe_pb2


class WeightsError(SymnetError, ValueError):
    """A .caffemodel does not fit the net."""


def _legacy4(shape):
    if len(shape) > 4:
        return None
    return (1,) * (4 - len(shape)) + tuple(shape)


def _fits(target_shape, blob_proto, array):
    if tuple(array.shape) == tuple(target_shape):
        return True
    legacy = any(blob_proto.HasField(f) for f in ("num", "channels", "height", "width"))
    return legacy and _legacy4(target_shape) == tuple(array.shape)


def copy_trained_layers(net, path):
    path = os.fspath(path)
    source = prototxt.read_net_binary(path)
    source, _ = upgrade.upgrade_net(source)
    targets = dict(zip(net._layer_names, net._layers))
    loads = []
    for lp in source.layer:
        target = targets.get(lp.name)
        if target is None or not len(lp.blobs):
            continue
        if len(lp.blobs) != len(target.blobs):
            raise WeightsError(f"{path}: layer '{lp.name}' ({target.type}) has "
                               f"{len(lp.blobs)} blobs in the file, the net expects "
                               f"{len(target.blobs)}")
        for j, (bp, blob) in enumerate(zip(lp.blobs, target.blobs)):
            array = prototxt.blob_to_array(bp)
            if not _fits(blob.shape, bp, array):
                raise WeightsError(f"{path}: layer '{lp.name}' ({target.type}) blob {j}: "
                                   f"the file has shape {list(array.shape)}, the net "
                                   f"expects {list(blob.shape)}")
            loads.append((blob, array))
    if not loads and any(layer.blobs for layer in net._layers):
        needed = [n for n, l in zip(net._layer_names, net._layers) if l.blobs]
        held = [lp.name for lp in source.layer if len(lp.blobs)]
        raise WeightsError(f"{path}: holds no weights for this net "
                           f"({os.path.getsize(path)} bytes; layers with weights in the "
                           f"file: {', '.join(held) or 'none'}); the net's layers with "
                           f"weights: {', '.join(needed)}")
    for blob, array in loads:          # all checked: now written
        blob.data[...] = array.reshape(blob.shape)


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
