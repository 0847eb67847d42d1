"""WindowData against Caffe's WindowDataLayer (BVLC caffe, window_data_layer.cpp).

What Caffe does, written down here and checked below:

* The window file repeats ``# image_index``, the image path (prefixed with
  ``root_folder`` as a string), channels, height, width, num_windows, then num_windows
  lines ``class_index overlap x1 y1 x2 y2``. A window with overlap >= fg_threshold is
  foreground (class must be > 0), overlap < bg_threshold background (its class becomes
  0); windows in between are dropped.
* A batch is ``batch_size - num_fg`` background windows, then ``num_fg = (int)
  ((float) batch_size * fg_fraction)`` foreground ones, each drawn from its set.
* Each window: with context_pad > 0 or crop_mode "square", it is grown around its
  centre by crop / (crop - 2 context_pad) (made square first in "square" mode), clipped
  to the image; the clipped part is warped (cv::resize INTER_LINEAR) to its share of the
  crop and placed at its offset, the rest of the crop stays 0. Float32 arithmetic, C's
  round. Mirroring flips the warped window and places it at the mirrored offset.
* Pixel values ``(pixel - mean) * window_data_param.scale``; mean_file indexed at
  ``(width - crop) / 2`` plus the crop position, not mirrored; mean_value per channel.
* Images are decoded in colour, BGR.

The random choices come from symnet's seeded stream, not Caffe's generator (documented
in symnet/data/window.py); tests fix them by giving each set one window, or check
properties that hold for any draw.
"""
from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest

import symnet as sn
from symnet import data
from symnet.data.window import parse_window_file, resize_linear
from symnet.formats import prototxt

Image = pytest.importorskip("PIL.Image")

CROP = 8


def make_images(folder, sizes, seed=0):
    """PNG images of the given (h, w); returns their BGR (3, h, w) arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb, "RGB").save(folder / f"im{i}.png")
        out.append(np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1)))
    return out


def window_file(path, entries, prefix=""):
    """entries: [(image name, (h, w), [(label, overlap, x1, y1, x2, y2), ...])]."""
    lines = []
    for i, (name, (h, w), windows) in enumerate(entries):
        lines += [f"# {i}", prefix + name, "3", str(h), str(w), str(len(windows))]
        lines += [" ".join(str(v) for v in win) for win in windows]
    path.write_text("\n".join(lines) + "\n")
    return path


def layer_text(batch=4, wdp="", tp="", name="win"):
    return textwrap.dedent(f"""\
        layer {{ name: "{name}" type: "WindowData" top: "data" top: "label"
          window_data_param {{ source: "windows.txt" batch_size: {batch} {wdp} }}
          transform_param {{ crop_size: {CROP} {tp} }} }}
        """)


def make_source(tmp_path, text, phase="TRAIN", seed=None):
    lp = prototxt.parse_net(text).layer[0]
    return data.create(lp, phase, str(tmp_path), seed=seed)


# ------------------------------------------------------------------ reference (Caffe)

def c_round(x):
    x = float(x)
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def ref_geometry(box, img_h, img_w, crop, pad, square, mirror):
    """Caffe's InternalThreadEntry geometry, step by step in float32."""
    x1, y1, x2, y2 = box
    f32 = np.float32
    size = (crop, crop)
    off = (0, 0)
    if pad > 0 or square:
        ctx = f32(crop) / f32(crop - 2 * pad)
        hh, hw = f32((y2 - y1 + 1) / 2.0), f32((x2 - x1 + 1) / 2.0)
        cx, cy = f32(x1) + hw, f32(y1) + hh
        if square:
            hh = hw = max(hh, hw)
        x1, x2 = c_round(cx - hw * ctx), c_round(cx + hw * ctx)
        y1, y2 = c_round(cy - hh * ctx), c_round(cy + hh * ctx)
        uw, uh = x2 - x1 + 1, y2 - y1 + 1
        left, top = max(0, -x1), max(0, -y1)
        right, bottom = max(0, x2 - img_w + 1), max(0, y2 - img_h + 1)
        x1, x2, y1, y2 = x1 + left, x2 - right, y1 + top, y2 - bottom
        sx, sy = f32(crop) / f32(uw), f32(crop) / f32(uh)
        ow, oh = c_round(f32(x2 - x1 + 1) * sx), c_round(f32(y2 - y1 + 1) * sy)
        ph = c_round(f32(top) * sy)
        pw = c_round(f32(right) * sx) if mirror else c_round(f32(left) * sx)
        size = (min(oh, crop - ph), min(ow, crop - pw))
        off = (ph, pw)
    return (x1, y1, x2, y2), size, off


def ref_resize(img, oh, ow):
    """cv::resize INTER_LINEAR, one output pixel at a time (rounded half up)."""
    c, h, w = img.shape
    out = np.empty((c, oh, ow), np.uint8)

    def tap(i, src, dst):
        v = (i + 0.5) * (src / dst) - 0.5
        lo = math.floor(v)
        frac = v - lo
        if lo < 0:
            lo, frac = 0, 0.0
        if lo >= src - 1:
            lo, frac = src - 1, 0.0
        return lo, min(lo + 1, src - 1), frac

    for i in range(oh):
        ya, yb, wy = tap(i, h, oh)
        for j in range(ow):
            xa, xb, wx = tap(j, w, ow)
            for k in range(c):
                left = float(img[k, ya, xa]) * (1 - wy) + float(img[k, yb, xa]) * wy
                right = float(img[k, ya, xb]) * (1 - wy) + float(img[k, yb, xb]) * wy
                out[k, i, j] = min(255, max(0, math.floor(left * (1 - wx) + right * wx + 0.5)))
    return out


def ref_window(img, box, pad=0, square=False, mirror=False, mean=None, mean_values=None,
               scale=1.0, crop=CROP):
    (x1, y1, x2, y2), (oh, ow), (ph, pw) = ref_geometry(box, img.shape[1], img.shape[2],
                                                        crop, pad, square, mirror)
    warped = ref_resize(img[:, y1:y2 + 1, x1:x2 + 1], oh, ow)
    if mirror:
        warped = warped[:, :, ::-1]
    out = np.zeros((3, crop, crop), np.float32)
    for c in range(3):
        for h in range(oh):
            for w in range(ow):
                pixel = np.float32(warped[c, h, w])
                if mean is not None:
                    off = (mean.shape[2] - crop) // 2
                    pixel = pixel - mean[c, h + off + ph, w + off + pw]
                elif mean_values is not None:
                    pixel = pixel - np.float32(mean_values[c if len(mean_values) > 1 else 0])
                out[c, h + ph, w + pw] = pixel * np.float32(scale)
    return out


# ------------------------------------------------------------------ the window file

def test_window_file_parsing_and_fg_bg_split(tmp_path):
    window_file(tmp_path / "w.txt", [
        ("a.png", (16, 20), [(3, 0.8, 2, 3, 11, 9), (5, 0.1, 0, 0, 7, 7),
                             (2, 0.3, 1, 1, 4, 4), (2, 0.45, 1, 1, 4, 4)]),
        ("b.png", (12, 14), [(1, 0.5, 8, 6, 13, 11), (4, 0.0, 0, 0, 13, 11)]),
    ])
    images, fg, bg = parse_window_file(str(tmp_path / "w.txt"), 0.5, 0.3)
    assert [(im["path"], im["height"], im["width"]) for im in images] == \
        [("a.png", 16, 20), ("b.png", 12, 14)]
    # overlap >= 0.5: foreground (0.5 itself included), class kept
    assert [(w["image"], w["label"], w["x1"], w["y1"], w["x2"], w["y2"]) for w in fg] == \
        [(0, 3, 2, 3, 11, 9), (1, 1, 8, 6, 13, 11)]
    # overlap < 0.3: background, class and overlap forced to 0; 0.3 and 0.45 dropped
    assert [(w["image"], w["label"], w["overlap"], w["x1"]) for w in bg] == \
        [(0, 0, 0.0, 0), (1, 0, 0.0, 0)]
    assert [w["line"] for w in fg + bg] == [7, 17, 8, 18]


def test_window_file_tokens_may_share_lines(tmp_path):
    (tmp_path / "w.txt").write_text("# 0 a.png 3 4 5 2 1 0.9 0 0 1 1\n 0 0.2 1 1 2 2 \n")
    images, fg, bg = parse_window_file(str(tmp_path / "w.txt"))
    assert len(images) == 1 and len(fg) == 1 and len(bg) == 1


@pytest.mark.parametrize("text, line, words", [
    ("", None, "is empty"),
    ("image 0\n", 1, "expected '#'"),
    ("# 0\na.png\n3\n4\n5\n1\n1 0.9 0 0 x 2\n", 7, "x2"),
    ("# 0\na.png\n3\n4\n5\n1\n1 0.9 0 0\n", 7, "the file ends"),
    ("# 0\na.png\n3\n4\n5\n1\n0 0.9 0 0 2 2\n", 7, "class 0; must be > 0"),
    ("# 0\na.png\n3\n4\n5\n0\n# 2\nb.png\n3\n4\n5\n0\n", 7, "image index 2"),
    ("# 0\na.png\n1\n4\n5\n0\n", 2, "1 channels"),
    ("# 0\na.png\n3\n4\n5\n1\n1 nan 0 0 2 2\n", 7, "overlap"),
    ("# 0\na.png\n3\n4\n5\n1\n1 0.9 3 0 2 2\n", 7, "is empty"),
])
def test_malformed_window_file_names_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "w.txt"
    path.write_text(text)
    with pytest.raises(data.DataError) as info:
        parse_window_file(str(path))
    msg = str(info.value)
    assert str(path) in msg and words in msg, msg
    if line is not None:
        assert f"line {line}:" in msg, msg


def test_malformed_window_file_through_a_net_names_the_layer(tmp_path):
    (tmp_path / "windows.txt").write_text("# 0\na.png\n3\n4\n5\n1\n1 0.9 0 0 2\n")
    (tmp_path / "net.prototxt").write_text(layer_text())
    with pytest.raises(sn.layers.LayerError) as info:
        sn.Net(str(tmp_path / "net.prototxt"), sn.TRAIN, backend="numpy")
    msg = str(info.value)
    assert "layer 'win' (WindowData)" in msg and "windows.txt', line 7" in msg, msg


# ------------------------------------------------------------------ batches

def _one_each(tmp_path, fg_box=(8, 6, 13, 11), bg_box=(0, 0, 7, 7)):
    """One background window on image 0 (16 x 20), one foreground window (class 2) on
    image 1 (12 x 14): every draw is determined."""
    imgs = make_images(tmp_path, [(16, 20), (12, 14)])
    window_file(tmp_path / "windows.txt", [
        ("im0.png", (16, 20), [(7, 0.1) + tuple(bg_box)]),
        ("im1.png", (12, 14), [(2, 0.9) + tuple(fg_box)]),
    ])
    return imgs


@pytest.mark.parametrize("batch, fraction, n_fg", [(10, 0.7, 7), (8, 0.25, 2), (5, 0.5, 2),
                                                   (3, 0.0, 0), (4, 1.0, 4)])
def test_fg_bg_counts_per_batch(tmp_path, batch, fraction, n_fg):
    # (int)(10.0f * 0.7f) is 7 in float32 (6 in double): Caffe's count
    _one_each(tmp_path)
    assert int(np.float32(batch) * np.float32(fraction)) == n_fg
    src = make_source(tmp_path, layer_text(batch, f"fg_fraction: {fraction}"))
    assert src.top_shapes() == [(batch, 3, CROP, CROP), (batch,)]
    for _ in range(2):
        x, y = src.next_batch()
        np.testing.assert_array_equal(y, [0] * (batch - n_fg) + [2] * n_fg)


def test_geometry_by_hand():
    # box x 4..6, y 1..10 in a 12 x 14 image, crop 8, context_pad 2: context scale 2;
    # centre (5.5, 6), half sizes (1.5, 5): x1 = round(2.5) = 3 (C rounds halves away
    # from 0), x2 = round(8.5) = 9, y1 = -4, y2 = 16; unclipped 7 x 21; clipped to
    # y 0..11 (4 above, 5 below); warped width round(7 * 8/7) = 8, height
    # round(12 * 8/21) = 5, placed at row round(4 * 8/21) = 2
    from symnet.data.window import window_geometry
    assert window_geometry(4, 1, 6, 10, 12, 14, 8, 2, False, False) == \
        ((3, 0, 9, 11), (5, 8), (2, 0))
    assert ref_geometry((4, 1, 6, 10), 12, 14, 8, 2, False, False) == \
        ((3, 0, 9, 11), (5, 8), (2, 0))


@pytest.mark.parametrize("box", [(8, 6, 13, 11), (4, 1, 6, 10)])
@pytest.mark.parametrize("pad, mode", [(0, "warp"), (2, "warp"), (0, "square"),
                                       (1, "square"), (3, "warp")])
def test_warp_geometry_with_context_padding(tmp_path, pad, mode, box):
    imgs = _one_each(tmp_path, fg_box=box)
    src = make_source(tmp_path, layer_text(
        2, f'fg_fraction: 0.5 context_pad: {pad} crop_mode: "{mode}"'))
    x, y = src.next_batch()
    np.testing.assert_array_equal(y, [0, 2])
    square = mode == "square"
    np.testing.assert_array_equal(x[0], ref_window(imgs[0], (0, 0, 7, 7), pad, square))
    np.testing.assert_array_equal(x[1], ref_window(imgs[1], box, pad, square))
    if pad:       # the grown window leaves the image: part of the crop is padding (0)
        geo = ref_geometry(box, 12, 14, CROP, pad, square, False)
        (oh, ow), (ph, pw) = geo[1], geo[2]
        assert (oh, ow) != (CROP, CROP)
        assert not x[1][:, :, pw + ow:].any() and not x[1][:, ph + oh:, :].any()


def test_an_unknown_crop_mode_warps_as_in_caffe(tmp_path):
    imgs = _one_each(tmp_path)
    with pytest.warns(UserWarning, match="crop_mode 'sqaure' is taken as 'warp'"):
        src = make_source(tmp_path, layer_text(2, 'fg_fraction: 0.5 crop_mode: "sqaure"'))
    np.testing.assert_array_equal(src.next_batch()[0][1],
                                  ref_window(imgs[1], (8, 6, 13, 11), 0, False))


def test_a_tall_window_in_square_mode(tmp_path):
    imgs = _one_each(tmp_path, fg_box=(5, 1, 7, 10))
    src = make_source(tmp_path, layer_text(2, 'fg_fraction: 0.5 crop_mode: "square"'))
    x, _ = src.next_batch()
    np.testing.assert_array_equal(x[1], ref_window(imgs[1], (5, 1, 7, 10), 0, True))


def test_mirror_flips_the_window_and_its_padding(tmp_path):
    imgs = _one_each(tmp_path)
    src = make_source(tmp_path, layer_text(8, "fg_fraction: 0.5 context_pad: 2",
                                           "mirror: true"))
    plain = ref_window(imgs[1], (8, 6, 13, 11), 2, mirror=False)
    flipped = ref_window(imgs[1], (8, 6, 13, 11), 2, mirror=True)
    # the padding moves with the window: here (left 0, right 2 of 8) the whole crop flips
    assert ref_geometry((8, 6, 13, 11), 12, 14, CROP, 2, False, True)[2] == (0, 2)
    np.testing.assert_array_equal(flipped, plain[:, :, ::-1])
    assert not np.array_equal(plain, flipped)
    seen = set()
    for _ in range(3):
        x, _ = src.next_batch()
        for item in x[4:]:
            if np.array_equal(item, plain):
                seen.add("plain")
            else:
                np.testing.assert_array_equal(item, flipped)
                seen.add("flipped")
    assert seen == {"plain", "flipped"}


def test_mean_value_and_scale(tmp_path):
    imgs = _one_each(tmp_path)
    src = make_source(tmp_path, layer_text(
        2, "fg_fraction: 0.5 context_pad: 1 scale: 0.5",
        "mean_value: 100 mean_value: 50 mean_value: 10"))
    x, _ = src.next_batch()
    np.testing.assert_array_equal(x[1], ref_window(imgs[1], (8, 6, 13, 11), 1,
                                                   mean_values=[100, 50, 10], scale=0.5))
    # padding stays 0: the mean is subtracted from the window's pixels only
    geo = ref_geometry((8, 6, 13, 11), 12, 14, CROP, 1, False, False)
    assert not x[1][:, :, geo[2][1] + geo[1][1]:].any()


def test_mean_file_indexed_at_the_crop_position(tmp_path):
    imgs = _one_each(tmp_path)
    mean = np.random.default_rng(3).uniform(0, 255, (1, 3, 12, 12)).astype(np.float32)
    prototxt.write_blobproto(mean, str(tmp_path / "mean.binaryproto"))
    src = make_source(tmp_path, layer_text(2, "fg_fraction: 0.5 context_pad: 2",
                                           'mean_file: "mean.binaryproto"'))
    x, _ = src.next_batch()
    np.testing.assert_array_equal(x[0], ref_window(imgs[0], (0, 0, 7, 7), 2, mean=mean[0]))
    np.testing.assert_array_equal(x[1], ref_window(imgs[1], (8, 6, 13, 11), 2,
                                                   mean=mean[0]))


def test_cache_images_and_root_folder(tmp_path):
    imgs = make_images(tmp_path / "pics", [(16, 20), (12, 14)])
    window_file(tmp_path / "windows.txt", [
        ("im0.png", (16, 20), [(7, 0.1, 0, 0, 7, 7)]),
        ("im1.png", (12, 14), [(2, 0.9, 8, 6, 13, 11)]),
    ])
    # root_folder is prepended as a string, as Caffe does
    text = layer_text(2, 'fg_fraction: 0.5 root_folder: "pics/" cache_images: true')
    src = make_source(tmp_path, text)
    (tmp_path / "pics" / "im1.png").unlink()            # cached: not read again
    x, _ = src.next_batch()
    np.testing.assert_array_equal(x[1], ref_window(imgs[1], (8, 6, 13, 11)))
    lazy = make_source(tmp_path, text.replace("cache_images: true", ""))
    with pytest.raises(data.DataError, match="line 9 of the window file"):
        lazy.next_batch()


def test_window_outside_its_image_names_the_line(tmp_path):
    _one_each(tmp_path, fg_box=(8, 6, 14, 11))          # x2 = 14 in a 14-wide image
    src = make_source(tmp_path, layer_text(2, "fg_fraction: 0.5"))
    with pytest.raises(data.DataError, match=r"windows.txt', line 14: .* not inside"):
        src.next_batch()


def test_empty_set_a_batch_draws_from_is_refused(tmp_path):
    make_images(tmp_path, [(16, 20)])
    window_file(tmp_path / "windows.txt", [("im0.png", (16, 20), [(7, 0.1, 0, 0, 7, 7)])])
    with pytest.raises(data.DataError, match="no foreground windows"):
        make_source(tmp_path, layer_text(4, "fg_fraction: 0.25"))
    make_source(tmp_path, layer_text(4, "fg_fraction: 0.2"))    # int(0.8) = 0: fine


def test_resize_matches_opencv_within_one(tmp_path):
    cv2 = pytest.importorskip("cv2")
    img = np.random.default_rng(5).integers(0, 256, (3, 13, 17), dtype=np.uint8)
    for oh, ow in [(8, 8), (5, 11), (20, 30), (13, 17), (6, 8)]:
        ours = resize_linear(img, oh, ow).astype(int)
        theirs = cv2.resize(np.ascontiguousarray(img.transpose(1, 2, 0)), (ow, oh),
                            interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1).astype(int)
        assert np.abs(ours - theirs).max() <= 1, (oh, ow)
        np.testing.assert_array_equal(ours, ref_resize(img, oh, ow))


# ------------------------------------------------------------------ position, nets

def test_state_resumes_the_same_batches(tmp_path):
    make_images(tmp_path, [(16, 20), (12, 14)])
    window_file(tmp_path / "windows.txt", [
        ("im0.png", (16, 20), [(7, 0.1, 0, 0, 7, 7), (1, 0.2, 3, 3, 9, 9)]),
        ("im1.png", (12, 14), [(2, 0.9, 8, 6, 13, 11), (3, 0.7, 0, 0, 5, 5),
                               (1, 0.6, 2, 2, 10, 10)]),
    ])
    text = layer_text(6, "fg_fraction: 0.5 context_pad: 1", "mirror: true")
    a = make_source(tmp_path, text)
    a.next_batch()
    st = a.state()
    assert json.loads(json.dumps(st)) == st
    expect = [a.next_batch() for _ in range(3)]
    b = make_source(tmp_path, text, seed=99)
    b.next_batch()
    b.set_state(st)
    for e, g in zip(expect, [b.next_batch() for _ in range(3)]):
        np.testing.assert_array_equal(e[0], g[0])
        np.testing.assert_array_equal(e[1], g[1])
    # the same seed gives the same stream; the windows drawn vary between batches
    c = make_source(tmp_path, text, seed=a.seed)
    np.testing.assert_array_equal(c.next_batch()[0], make_source(
        tmp_path, text, seed=a.seed).next_batch()[0])
    labels = np.concatenate([e[1] for e in expect])
    assert set(labels[labels > 0]) == {1, 2, 3}


NET = """
layer { name: "win" type: "WindowData" top: "data" top: "label"
  window_data_param { source: "windows.txt" batch_size: 4 fg_fraction: 0.5 context_pad: 2 }
  transform_param { crop_size: 8 } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pooled"
  pooling_param { pool: AVE kernel_size: 8 } }
"""


@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_through_a_net_and_pycaffe(tmp_path, backend):
    imgs = _one_each(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    net = sn.Net(str(tmp_path / "net.prototxt"), sn.TRAIN, backend=backend)
    net.forward()
    expect = np.stack([ref_window(imgs[0], (0, 0, 7, 7), 2)] * 2 +
                      [ref_window(imgs[1], (8, 6, 13, 11), 2)] * 2)
    np.testing.assert_array_equal(net.blobs["data"].data, expect)
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 0, 2, 2])
    np.testing.assert_allclose(net.blobs["pooled"].data[:, :, 0, 0],
                               expect.mean(axis=(2, 3)), rtol=1e-5, atol=1e-4)
    net.close()
    import symnet.caffe as caffe
    pnet = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN, backend=backend)
    out = pnet.forward()
    np.testing.assert_allclose(out["pooled"][:, :, 0, 0], expect.mean(axis=(2, 3)),
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(pnet.blobs["label"].data, [0, 0, 2, 2])
