"""Caffe's HDF5Output layer: writes its two bottoms (data, label) to an HDF5 file.

What Caffe does (BVLC caffe, hdf5_output_layer.cpp and util/hdf5.cpp):

* When the net is built (LayerSetUp), ``hdf5_output_param.file_name`` is created, or
  truncated, as an HDF5 file holding nothing. The name is used as given (relative to
  the working directory).
* A forward writes the datasets ``data`` and ``label``: float32, each shaped with the
  legacy 4-D accessors ``(num, channels, height, width)``, an axis a bottom does not have
  being 1 (a label of shape (N,) is written (N, 1, 1, 1)); the bottoms must agree on num.
  Bottoms of more than 4 axes are refused (Caffe's legacy accessors refuse them).
* A second forward of the same net tries to create the datasets again, which the HDF5
  library refuses, and Caffe stops (CHECK failure). Here the second forward raises a
  DataError naming the layer and the file, and the file keeps the first forward's
  batch.
* No tops, and no backward: nothing reaches the bottoms' diffs from this layer.

Unlike Caffe, every write is atomic: the file is written whole to a temporary file in
its folder (:func:`symnet.formats.prototxt.create_temp`), flushed to disk, and renamed
over ``file_name``, so a crash never leaves a half-written file.

The layer runs on the host as a host step of the compiled plan (the bottoms are copied
to the host on device backends), like a Caffe Python layer; its one graph output is
the number of batches written, kept as a state value of the layer so that every forward
computes it. A net rebuilt by ``net.reshape()`` creates (truncates) the file again, as a
new Caffe net would. h5py is an optional dependency, imported when the layer is built.
"""
from __future__ import annotations

import os

import numpy as np

from .base import DataError
from .formats import DATA_EXTRA_HINT
from .. import functions as F
from ..layers._util import param_message
from ..layers.registry import context, layer, state_update
from ..ops import PythonTop
from ..ops.python import EffectCount

DATASETS = ("data", "label")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError(f"HDF5Output needs h5py: {DATA_EXTRA_HINT}") from None
    return h5py


def legacy_shape(shape):
    """Caffe's (num, channels, height, width) of a blob of at most 4 axes."""
    shape = tuple(int(d) for d in shape)
    return shape + (1,) * (4 - len(shape))


def write_atomic(path, arrays: dict):
    """Write ``{dataset name: array}`` as a new HDF5 file replacing ``path`` at once."""
    h5py = _h5py()
    from ..formats.prototxt import replace_file

    def fill(fd, tmp):
        os.close(fd)
        with h5py.File(tmp, "w") as f:
            for name, array in arrays.items():
                f.create_dataset(name, data=np.ascontiguousarray(array, dtype=np.float32))
    replace_file(path, fill, lambda why: DataError(f"HDF5Output: cannot write the file "
                                                   f"'{path}': {why}"))


class HDF5Writer:
    """The host side of one HDF5Output layer (the interface of a Python layer's runner
    that :class:`symnet.ops.PythonTop` and the lowering call)."""

    def __init__(self, name, file_name, bottom_shapes):
        # the file Caffe opens at setup: later forwards write it even if the working
        # directory changes meanwhile
        self.name, self.file_name = name, os.path.abspath(file_name)
        self.bottom_shapes = [tuple(s) for s in bottom_shapes]
        self.save_shapes = [legacy_shape(s) for s in self.bottom_shapes]
        self.top_shapes = [(1,)]
        self.top_tensors = []
        self.params = []
        self.written = 0
        write_atomic(self.file_name, {})       # Caffe's H5Fcreate(H5F_ACC_TRUNC)

    @property
    def n_args(self):
        return len(self.bottom_shapes)

    def check_arg_shapes(self, shapes):
        if [tuple(s) for s in shapes] != self.bottom_shapes:
            raise DataError(f"HDF5Output '{self.name}' was built for bottoms of shapes "
                            f"{self.bottom_shapes}, got {[tuple(s) for s in shapes]}")

    def differentiable(self, i):
        return False                           # Caffe's Backward does nothing

    def forward_into(self, bottom_arrays, top_arrays):
        if self.written:
            raise DataError(f"HDF5Output '{self.name}': the file '{self.file_name}' already "
                            "holds the datasets 'data' and 'label' of this net's first "
                            "forward; Caffe's HDF5Output writes one batch per net (a second "
                            "forward fails in Caffe as well): build a new net to write "
                            "another file")
        arrays = {name: np.asarray(a, dtype=np.float32).reshape(s)
                  for name, a, s in zip(DATASETS, bottom_arrays, self.save_shapes)}
        write_atomic(self.file_name, arrays)
        self.written += 1
        top_arrays[0][...] = self.written

    def forward_arrays(self, arrays):
        out = np.zeros(1, dtype=np.float32)
        self.forward_into(arrays, [out])
        return [out.astype(arrays[0].dtype)]


@layer("HDF5Output", params="hdf5_output_param")
def hdf5_output(*bottoms, file_name=None):
    """Writes bottoms data and label to ``file_name`` (datasets 'data' and 'label'),
    Caffe's HDF5OutputLayer; no tops."""
    ctx = context()
    if file_name is None or file_name == "":
        raise ValueError(param_message("hdf5_output_param.file_name", file_name or None,
                                       "the HDF5 file to write"))
    if len(bottoms) != 2:
        raise ValueError(f"HDF5Output takes 2 bottoms (data, label), got {len(bottoms)}")
    if ctx.ntop != 0:
        raise ValueError(f"HDF5Output has no tops, the prototxt names {ctx.ntop}")
    shapes = [tuple(b.shape) for b in bottoms]
    for which, s in zip(DATASETS, shapes):
        if len(s) > 4:
            raise ValueError(f"HDF5Output writes bottoms of at most 4 axes (Caffe's legacy "
                             f"num, channels, height, width); bottom {which} has shape "
                             f"{list(s)}")
    nums = [legacy_shape(s)[0] for s in shapes]
    if nums[0] != nums[1]:
        raise ValueError(f"HDF5Output: bottoms data {list(shapes[0])} and label "
                         f"{list(shapes[1])} must have the same num (first axis)")
    _h5py()
    writer = HDF5Writer(ctx.name, str(file_name), shapes)
    graph = F.graph_of(bottoms[0])
    marker = graph.add(PythonTop(writer, 0), list(bottoms))
    writer.top_tensors = [marker]
    count = graph.add(EffectCount(f"{ctx.name}_written"), [], name=f"{ctx.name}_written")
    state_update(count, marker)
    return []
