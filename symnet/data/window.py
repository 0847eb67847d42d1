"""Caffe's WindowData layer: windows of images sampled for detection training (R-CNN).

The window file (``window_data_param.source``) repeats, one entry per image::

    # image_index
    image_path
    channels
    height
    width
    num_windows
    class_index overlap x1 y1 x2 y2      (num_windows lines)

Tokens may be separated by any white space, as Caffe reads them with ``>>``. The
height and width given are not used (Caffe takes the decoded image's size), and the
data top has the channels of the last image entry, which must be 3. Image
indices count from 0 in file order (Caffe looks windows' images up by that index);
``root_folder`` is prepended to each path as a string, as Caffe does (so it usually ends
with ``/``); a relative path is looked up from the prototxt's folder, the working
directory (where Caffe looks) and the window file's folder. A window with ``overlap >=
fg_threshold`` is foreground (its class must be > 0); one with ``overlap <
bg_threshold`` is background (its class becomes 0); the others are not used.

Every batch holds ``num_fg = int(float(batch_size) * fg_fraction)`` (float32 product,
truncated) foreground windows after ``batch_size - num_fg`` background ones. For each
item a window is drawn uniformly from its set, then (with ``mirror``) a coin decides the
flip. The window (``x1..x2``, ``y1..y2`` inclusive) is cut from the image, decoded in
colour (BGR), and warped to ``crop_size`` x ``crop_size`` (``transform_param.crop_size``)
by bilinear interpolation with OpenCV's INTER_LINEAR sampling (pixel centres, edge
pixels repeated, rounded to uint8). With ``context_pad`` > 0 or ``crop_mode: "square"``
the window is first grown (to a square in "square" mode) by ``crop_size / (crop_size -
2 * context_pad)`` around its centre, the part inside the image is warped by the same
factor and placed at its offset in the crop, and the rest of the crop stays 0 (Caffe's
geometry, in float32 with C's ``round``; the padding is mirrored with the window). Each
pixel becomes ``(pixel - mean) * window_data_param.scale``, where the mean is the
``transform_param.mean_file`` image (its centre crop, indexed at the crop position, not
mirrored) or ``transform_param.mean_value`` per channel; padding is left at 0.

Differences from Caffe, on purpose:

* Random draws come from the source's seeded stream (:mod:`symnet.data.base`): per item
  an index into the window set (``integers(n)``), then the mirror coin when ``mirror``.
  Caffe draws ``rand() % n`` from its own generator, so the windows sampled differ from
  Caffe's for the same seed; the split, the geometry and the arithmetic do not.
* The interpolation is computed in floating point; OpenCV's fixed-point uint8 resize can
  differ by 1 in a pixel value.
* Errors Caffe leaves to a crash or to memory past the blob (an empty foreground or
  background set it must draw from, a window outside its image, a channel count other
  than 3, a mean image smaller than the crop, image indices out of order) are
  DataErrors naming the file and line.
* ``cache_images`` keeps the decoded images in memory (Caffe keeps the file bytes and
  decodes each time: the values are the same).

The source has no position beyond its random stream, which ``state()`` records.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from . import register
from .base import DataError, Source, resolve_path, search_bases
from .formats import read_image
from .transform import load_mean_file
from ..layers._util import param_message

WDP = "window_data_param"


# ----------------------------------------------------------------------------- file

def _tokens(path):
    """(token, line number) pairs of a text file (read up to the text size limit)."""
    from ..formats.prototxt import read_limited
    data = read_limited(path, what="window file", error=DataError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"window file '{path}', line {line}: found the byte "
                        f"0x{data[e.start]:02x}, which is not valid UTF-8") from None
    out = []
    for n, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        out.extend((tok, n) for tok in line.split())
    return out


def parse_window_file(path, fg_threshold=0.5, bg_threshold=0.5):
    """The images and windows of a window file: (images, fg, bg) where images are dicts
    {path, channels, height, width, line} and fg / bg are lists of windows, each a dict
    {image, label, overlap, x1, y1, x2, y2, line}. Thresholds are compared in float32,
    as Caffe's."""
    toks = _tokens(path)
    if not toks:
        raise DataError(f"window file '{path}' is empty")
    pos = [0]
    fg_t, bg_t = np.float32(fg_threshold), np.float32(bg_threshold)

    def take(what, kind=int):
        if pos[0] >= len(toks):
            last = toks[-1][1]
            raise DataError(f"window file '{path}', line {last}: the file ends where "
                            f"{what} was expected")
        tok, line = toks[pos[0]]
        pos[0] += 1
        try:
            value = kind(tok)
            if kind is float and not math.isfinite(value):
                raise ValueError
        except ValueError:
            raise DataError(f"window file '{path}', line {line}: expected {what} "
                            f"({'a number' if kind is float else 'an integer'}), found "
                            f"{tok!r}") from None
        return value, line

    images, fg, bg = [], [], []
    while pos[0] < len(toks):
        tok, line = toks[pos[0]]
        if tok != "#":
            raise DataError(f"window file '{path}', line {line}: expected '#' starting "
                            f"an image entry, found {tok!r}")
        pos[0] += 1
        index, line = take("the image index after '#'")
        if index != len(images):
            raise DataError(f"window file '{path}', line {line}: image index {index}; "
                            f"expected {len(images)} (indices count from 0 in file order)")
        image_path, line = take("the image path", str)
        dims = []
        for what in ("channels", "height", "width"):
            value, vline = take(f"the image's {what}")
            if value <= 0:
                raise DataError(f"window file '{path}', line {vline}: {what} {value}; "
                                "must be positive")
            dims.append(value)
        if dims[0] != 3:
            raise DataError(f"window file '{path}', line {line}: image '{image_path}' has "
                            f"{dims[0]} channels; WindowData decodes every image in colour "
                            "(3 channels), as Caffe")
        images.append({"path": image_path, "channels": dims[0], "height": dims[1],
                       "width": dims[2], "line": line})
        count, cline = take("the number of windows")
        if count < 0:
            raise DataError(f"window file '{path}', line {cline}: number of windows "
                            f"{count}; must be >= 0")
        for _ in range(count):
            label, wline = take("a window's class index")
            overlap, _ = take("a window's overlap", float)
            coords = [take(f"a window's {c}")[0] for c in ("x1", "y1", "x2", "y2")]
            x1, y1, x2, y2 = coords
            if x2 < x1 or y2 < y1:
                raise DataError(f"window file '{path}', line {wline}: window x1 {x1} y1 "
                                f"{y1} x2 {x2} y2 {y2} is empty (x2 < x1 or y2 < y1)")
            window = {"image": index, "label": label, "overlap": float(np.float32(overlap)),
                      "x1": x1, "y1": y1, "x2": x2, "y2": y2, "line": wline}
            if np.float32(overlap) >= fg_t:
                if label <= 0:
                    raise DataError(f"window file '{path}', line {wline}: a foreground "
                                    f"window (overlap {overlap} >= fg_threshold "
                                    f"{fg_threshold}) has class {label}; must be > 0")
                fg.append(window)
            elif np.float32(overlap) < bg_t:
                window.update(label=0, overlap=0.0)
                bg.append(window)
    return images, fg, bg


# ----------------------------------------------------------------------------- geometry

def c_round(x) -> int:
    """C's ``round``: halves away from zero."""
    x = float(x)
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def window_geometry(x1, y1, x2, y2, img_h, img_w, crop, context_pad, square, mirror):
    """Caffe's placement of a window in the crop: ((x1, y1, x2, y2) clipped source
    rectangle, (out_h, out_w) warped size, (pad_h, pad_w) offset in the crop). Float
    arithmetic in float32 as Caffe's ``Dtype``."""
    f = np.float32
    out_h = out_w = crop
    pad_h = pad_w = 0
    if context_pad > 0 or square:
        context_scale = f(crop) / f(crop - 2 * context_pad)
        half_h = f(f(y2 - y1 + 1) / 2.0)
        half_w = f(f(x2 - x1 + 1) / 2.0)
        cx = f(x1) + half_w
        cy = f(y1) + half_h
        if square:
            if half_h > half_w:
                half_w = half_h
            else:
                half_h = half_w
        x1 = c_round(cx - half_w * context_scale)
        x2 = c_round(cx + half_w * context_scale)
        y1 = c_round(cy - half_h * context_scale)
        y2 = c_round(cy + half_h * context_scale)
        unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
        px1, py1 = max(0, -x1), max(0, -y1)
        px2, py2 = max(0, x2 - img_w + 1), max(0, y2 - img_h + 1)
        x1, x2, y1, y2 = x1 + px1, x2 - px2, y1 + py1, y2 - py2
        clipped_h, clipped_w = y2 - y1 + 1, x2 - x1 + 1
        scale_x = f(crop) / f(unclipped_w)
        scale_y = f(crop) / f(unclipped_h)
        out_w = c_round(f(clipped_w) * scale_x)
        out_h = c_round(f(clipped_h) * scale_y)
        px1, px2 = c_round(f(px1) * scale_x), c_round(f(px2) * scale_x)
        py1 = c_round(f(py1) * scale_y)
        pad_h = py1
        pad_w = px2 if mirror else px1
        if pad_h + out_h > crop:
            out_h = crop - pad_h
        if pad_w + out_w > crop:
            out_w = crop - pad_w
    return (x1, y1, x2, y2), (out_h, out_w), (pad_h, pad_w)


def _linear_taps(src, dst):
    """OpenCV INTER_LINEAR sampling along one axis: (left index, right index, weight of
    the right one) for each output position."""
    scale = src / dst
    fx = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    sx = np.floor(fx)
    frac = fx - sx
    sx = sx.astype(np.int64)
    low = sx < 0
    frac[low], sx[low] = 0.0, 0
    high = sx >= src - 1
    frac[high], sx[high] = 0.0, src - 1
    return sx, np.minimum(sx + 1, src - 1), frac


def resize_linear(img, out_h, out_w) -> np.ndarray:
    """A (C, H, W) uint8 image resized to (C, out_h, out_w) as OpenCV's INTER_LINEAR
    (computed in float64, rounded half up to uint8)."""
    c, h, w = img.shape
    if (h, w) == (out_h, out_w):
        return img.copy()
    y0, y1, fy = _linear_taps(h, out_h)
    x0, x1, fx = _linear_taps(w, out_w)
    a = img.astype(np.float64)
    rows = a[:, y0, :] * (1.0 - fy)[None, :, None] + a[:, y1, :] * fy[None, :, None]
    out = rows[:, :, x0] * (1.0 - fx) + rows[:, :, x1] * fx
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- source

class WindowDataSource(Source):
    """Caffe's WindowData: tops data (batch, 3, crop, crop) and label (batch,).

    Windows are drawn at random, not read in an order, so a sharded source (rank r of
    N) shares nothing out: it draws from the rank's own stream generator, so the ranks
    draw different windows (as Caffe's WindowDataLayer, which has no Skip)."""

    type_name = "WindowData"

    def __init__(self, window_file, images, fg, bg, batch_size, crop_size, *,
                 fg_fraction=0.25, context_pad=0, crop_mode="warp", mirror=False, scale=1.0,
                 mean=None, mean_values=None, cache_images=False, root_folder="",
                 bases=(), name="data", phase="TRAIN", seed=None, world=None):
        super().__init__(name, phase, seed, world)
        self.window_file, self.images, self.fg, self.bg = window_file, images, fg, bg
        self.batch_size, self.crop = int(batch_size), int(crop_size)
        self.num_fg = int(np.float32(self.batch_size) * np.float32(fg_fraction))
        self.num_bg = self.batch_size - self.num_fg
        self.context_pad, self.square = int(context_pad), crop_mode == "square"
        self.mirror, self.scale = bool(mirror), np.float32(scale)
        self.mean, self.mean_values = mean, mean_values
        self.channels = images[-1]["channels"]
        for need, have, what in ((self.num_fg, fg, "foreground"), (self.num_bg, bg,
                                                                   "background")):
            if need and not have:
                raise DataError(f"window file '{window_file}' has no {what} windows, and each "
                                f"batch takes {need} (batch_size {self.batch_size}, "
                                f"fg_fraction {fg_fraction})")
        self.mean_off = 0
        if mean is not None:
            mc, mh, mw = mean.shape
            self.mean_off = (mw - self.crop) // 2
            if mc != self.channels or mw < self.crop or mh < self.mean_off + self.crop:
                raise DataError(f"transform_param.mean_file: the mean image has shape "
                                f"{list(mean.shape)}; WindowData needs {self.channels} "
                                f"channels and its centre crop of {self.crop} (taken at "
                                f"offset (width - crop_size) / 2 in both axes) inside it")
        if mean_values is not None and len(mean_values) not in (1, self.channels):
            raise DataError(f"transform_param.mean_value: {len(mean_values)} values for "
                            f"{self.channels} channels; give one, or one per channel")
        self.root_folder, self.bases = root_folder, list(bases)
        self._paths = [None] * len(images)
        self._cache = None
        if cache_images:
            self._cache = [self._read(i) for i in range(len(images))]

    def top_shapes(self):
        return [(self.batch_size, self.channels, self.crop, self.crop), (self.batch_size,)]

    def _path(self, i):
        if self._paths[i] is None:
            entry = self.images[i]
            self._paths[i] = resolve_path(
                self.root_folder + entry["path"], self.bases,
                f"image of line {entry['line']} of the window file '{self.window_file}'",
                directory=False)
        return self._paths[i]

    def _read(self, i):
        return read_image(self._path(i), True)

    def image(self, i) -> np.ndarray:
        return self._cache[i] if self._cache is not None else self._read(i)

    def window_crop(self, window, image, do_mirror) -> np.ndarray:
        """One window of ``image`` (C, H, W uint8) as Caffe places it in the crop
        (float32, (C, crop, crop)), mean subtracted and scaled."""
        _, img_h, img_w = image.shape
        (x1, y1, x2, y2), (oh, ow), (ph, pw) = window_geometry(
            window["x1"], window["y1"], window["x2"], window["y2"], img_h, img_w,
            self.crop, self.context_pad, self.square, do_mirror)
        where = f"window file '{self.window_file}', line {window['line']}"
        if x1 < 0 or y1 < 0 or x2 >= img_w or y2 >= img_h or x2 < x1 or y2 < y1:
            raise DataError(f"{where}: window x1 {window['x1']} y1 {window['y1']} x2 "
                            f"{window['x2']} y2 {window['y2']} is not inside its "
                            f"{img_w}x{img_h} image")
        if oh <= 0 or ow <= 0:
            raise DataError(f"{where}: the window's part inside its image warps to "
                            f"{ow}x{oh} pixels; nothing to place in the crop")
        warped = resize_linear(image[:, y1:y2 + 1, x1:x2 + 1], oh, ow)
        if do_mirror:
            warped = warped[:, :, ::-1]
        out = np.zeros((self.channels, self.crop, self.crop), dtype=np.float32)
        region = warped.astype(np.float32)
        if self.mean is not None:
            mo = self.mean_off
            region = region - self.mean[:, mo + ph:mo + ph + oh, mo + pw:mo + pw + ow]
        elif self.mean_values is not None:
            region = region - self.mean_values.reshape(-1, 1, 1)
        out[:, ph:ph + oh, pw:pw + ow] = region * self.scale
        return out

    def next_batch(self):
        data = np.zeros(self.top_shapes()[0], dtype=np.float32)
        labels = np.empty(self.batch_size, dtype=np.float32)
        item = 0
        for windows, count in ((self.bg, self.num_bg), (self.fg, self.num_fg)):
            for _ in range(count):
                window = windows[int(self.rng.integers(len(windows)))]
                do_mirror = bool(self.rng.integers(2)) if self.mirror else False
                data[item] = self.window_crop(window, self.image(window["image"]), do_mirror)
                labels[item] = window["label"]
                item += 1
        return [data, labels]


def _check(ok, field, value, expected):
    if not ok:
        raise DataError(param_message(field, value, expected))


@register("WindowData")
def _window_data(lp, phase, base_dir, seed=None, world=None):
    p = lp.window_data_param
    t = lp.transform_param if lp.HasField("transform_param") else None
    if len(lp.top) != 2:
        raise DataError(f"WindowData has 2 tops (data, label); the prototxt names "
                        f"{len(lp.top)}")
    _check(p.HasField("source") and p.source, f"{WDP}.source",
           p.source if p.HasField("source") else None, "the window file")
    _check(p.batch_size > 0, f"{WDP}.batch_size",
           p.batch_size if p.HasField("batch_size") else None, "> 0")
    crop = int(t.crop_size) if t is not None else 0
    if crop <= 0:
        hint = (f" ({WDP}.crop_size {p.crop_size} is not read: Caffe takes the crop size "
                "from transform_param)") if p.crop_size else ""
        raise DataError(param_message("transform_param.crop_size", crop or None,
                                      "> 0 (the size windows are warped to)") + hint)
    _check(0 <= p.fg_fraction <= 1, f"{WDP}.fg_fraction", p.fg_fraction, "in [0, 1]")
    _check(crop - 2 * int(p.context_pad) > 0, f"{WDP}.context_pad", p.context_pad,
           f"< crop_size / 2 ({crop} / 2)")
    if p.crop_mode not in ("warp", "square"):
        warnings.warn(f"WindowData '{lp.name}': {WDP}.crop_mode {p.crop_mode!r} is taken "
                      "as 'warp' (as Caffe does with any mode other than 'square')",
                      stacklevel=2)
    if t is not None and t.mean_file and len(t.mean_value):
        raise DataError("transform_param: give mean_file or mean_value, not both "
                        "(Caffe: cannot specify mean_file and mean_value at the same time)")
    ignored = [f"{WDP}.{f}" for f in ("mirror", "mean_file") if p.HasField(f)]
    if t is not None and t.HasField("scale") and t.scale != 1:
        ignored.append("transform_param.scale")
    if ignored:
        warnings.warn(f"WindowData '{lp.name}': {', '.join(ignored)} not read (Caffe's "
                      "WindowData takes mirror and mean_file from transform_param and "
                      f"scale from {WDP})", stacklevel=2)
    bases = search_bases(base_dir)
    path = resolve_path(p.source, bases, f"{WDP}.source", directory=False)
    images, fg, bg = parse_window_file(path, p.fg_threshold, p.bg_threshold)
    mean = mean_values = None
    if t is not None and t.mean_file:
        mean = load_mean_file(resolve_path(t.mean_file, bases, "transform_param.mean_file",
                                           directory=False))
    elif t is not None and len(t.mean_value):
        mean_values = np.array(t.mean_value, dtype=np.float32)
    image_bases = list(dict.fromkeys(bases + [os.path.dirname(path)]))
    return WindowDataSource(path, images, fg, bg, p.batch_size, crop,
                            fg_fraction=p.fg_fraction, context_pad=p.context_pad,
                            crop_mode=p.crop_mode, mirror=t is not None and t.mirror,
                            scale=p.scale, mean=mean, mean_values=mean_values,
                            cache_images=p.cache_images, root_folder=p.root_folder,
                            bases=image_bases, name=lp.name, phase=phase, seed=seed,
                            world=world)
