"""Caffe's ``transform_param`` (DataTransformer) on batches of images.

For every image of a batch, in Caffe's order: crop (``crop_size``: a random window in
TRAIN, the centre in TEST), mirror (``mirror``: left-right flip with probability 1/2, in
both phases, as Caffe), subtract the mean (``mean_file``: the mean image, cropped at the
same window and not mirrored, i.e. subtracted at the source pixel; or ``mean_value``: one
value, or one per channel), then multiply by ``scale``. The arithmetic is Caffe's, in
float32: ``out = (pixel - mean) * scale``.

The random draws come from the source's stream generator: first the mirror flags of
the batch, then the crop rows, then the crop columns.
"""
from __future__ import annotations

import numpy as np

from .base import DataError, resolve_path, search_bases


def load_mean_file(path) -> np.ndarray:
    """A .binaryproto mean image as a float32 (C, H, W) array."""
    from ..formats import prototxt
    try:
        mean = prototxt.read_blobproto(path)
    except prototxt.PrototxtError as e:
        raise DataError(f"mean_file: {e}") from None
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise DataError(f"mean_file '{path}' holds a blob of shape {list(mean.shape)}; "
                        "expected (1, C, H, W) or (C, H, W)")
    return np.ascontiguousarray(mean, dtype=np.float32)


class Transformer:
    """Caffe's DataTransformer for one data layer: ``Transformer(transform_param, phase,
    base_dir)``; ``output_shape((C, H, W))`` checks an image shape and gives the
    transformed one; ``transformer(batch, rng)`` transforms an (N, C, H, W) batch."""

    def __init__(self, param=None, phase="TRAIN", base_dir="."):
        self.train = phase == "TRAIN"
        self.scale = np.float32(param.scale if param is not None else 1.0)
        self.mirror = bool(param is not None and param.mirror)
        self.crop = int(param.crop_size) if param is not None else 0
        self.force_color = bool(param is not None and param.force_color)
        self.force_gray = bool(param is not None and param.force_gray)
        if self.force_color and self.force_gray:
            raise DataError("transform_param: force_color and force_gray cannot both be set")
        self.mean = None
        self.mean_values = None
        if param is not None and param.mean_file:
            if len(param.mean_value):
                raise DataError("transform_param: give mean_file or mean_value, not both")
            path = resolve_path(param.mean_file, search_bases(base_dir),
                                "transform_param.mean_file", directory=False)
            self.mean = load_mean_file(path)
        elif param is not None and len(param.mean_value):
            self.mean_values = np.array(param.mean_value, dtype=np.float32)

    @property
    def color(self):
        """How encoded images are decoded: True (3 channels), False (gray) or None (as
        stored), from force_color / force_gray."""
        return True if self.force_color else False if self.force_gray else None

    @property
    def identity(self) -> bool:
        return (self.scale == 1 and not self.mirror and not self.crop and self.mean is None
                and self.mean_values is None)

    def output_shape(self, shape):
        c, h, w = (int(d) for d in shape)
        if self.crop and (self.crop > h or self.crop > w):
            raise DataError(f"transform_param: crop_size {self.crop} is larger than the "
                            f"{h}x{w} images")
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise DataError(f"transform_param: the mean_file image has shape "
                            f"{list(self.mean.shape)}, the data images {[c, h, w]}")
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise DataError(f"transform_param: {len(self.mean_values)} mean_value(s) for "
                            f"{c}-channel images; give one, or one per channel")
        if self.crop:
            return (c, self.crop, self.crop)
        return (c, h, w)

    def __call__(self, batch, rng) -> np.ndarray:
        x = np.asarray(batch)
        n, c, h, w = x.shape
        self.output_shape((c, h, w))
        flips = rng.integers(0, 2, size=n).astype(bool) if self.mirror else None
        if self.crop:
            k = self.crop
            if self.train:
                hoff = rng.integers(0, h - k + 1, size=n)
                woff = rng.integers(0, w - k + 1, size=n)
            else:
                hoff = np.full(n, (h - k) // 2)
                woff = np.full(n, (w - k) // 2)
            out = np.empty((n, c, k, k), dtype=np.float32)
            for i in range(n):
                a, b = int(hoff[i]), int(woff[i])
                window = x[i, :, a:a + k, b:b + k]
                if self.mean is not None:
                    np.subtract(window, self.mean[:, a:a + k, b:b + k], out=out[i],
                                dtype=np.float32)
                else:
                    out[i] = window
        elif self.mean is not None:
            out = np.subtract(x, self.mean, dtype=np.float32)
        else:
            out = np.array(x, dtype=np.float32, copy=True)
        if self.mean_values is not None:
            out -= self.mean_values.reshape(1, -1, 1, 1)
        if self.scale != 1:
            out *= self.scale
        if flips is not None and flips.any():
            out[flips] = out[flips][..., ::-1]
        return np.ascontiguousarray(out)
