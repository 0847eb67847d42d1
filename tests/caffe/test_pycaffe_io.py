"""caffe.io's Transformer, resize_image, oversample and load_image against NumPy and
the documented pycaffe behaviour."""
from __future__ import annotations

import numpy as np
import pytest

from symnet.caffe import io

RNG = np.random.default_rng(7)


def _transformer(shape=(1, 3, 8, 6)):
    return io.Transformer({"data": shape})


def test_preprocess_matches_numpy_steps_and_deprocess_inverts_it():
    t = _transformer()
    mean = RNG.uniform(50, 150, size=3).astype(np.float32)
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", mean)
    t.set_input_scale("data", 0.017)
    img = RNG.uniform(0, 1, size=(8, 6, 3)).astype(np.float32)
    before = img.copy()
    x = t.preprocess("data", img)
    expected = ((img.transpose(2, 0, 1)[[2, 1, 0]] * 255.0) - mean[:, None, None]) * 0.017
    assert x.shape == (3, 8, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(img, before)            # the caller's image is kept
    np.testing.assert_allclose(t.deprocess("data", x), img, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", x[None]), img, rtol=1e-5, atol=1e-5)


def test_round_trip_with_a_cyclic_channel_swap_and_full_mean():
    t = _transformer((2, 3, 5, 4))
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (1, 2, 0))                  # not its own inverse
    full = RNG.uniform(0, 1, size=(3, 5, 4)).astype(np.float32)
    t.set_mean("data", full)
    img = RNG.uniform(0, 1, size=(5, 4, 3)).astype(np.float32)
    x = t.preprocess("data", img)
    np.testing.assert_allclose(x, img.transpose(2, 0, 1)[[1, 2, 0]] - full, atol=1e-6)
    np.testing.assert_allclose(t.deprocess("data", x), img, atol=1e-6)


def test_preprocess_resizes_to_the_input_size():
    t = _transformer((1, 3, 4, 4))
    t.set_transpose("data", (2, 0, 1))
    img = RNG.uniform(0, 1, size=(8, 8, 3)).astype(np.float32)
    x = t.preprocess("data", img)
    assert x.shape == (3, 4, 4)
    # halving with pixel-centre alignment: each output is the mean of a 2x2 block
    blocks = img.reshape(4, 2, 4, 2, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
    np.testing.assert_allclose(x, blocks, atol=1e-6)


def test_shape_checks_and_errors():
    t = _transformer()
    with pytest.raises(Exception, match="not one of the net inputs"):
        t.set_raw_scale("label", 2.0)
    with pytest.raises(Exception, match="same number of dimensions as the input"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(Exception, match="input channels"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="Mean channels incompatible"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match="Mean shape incompatible"):
        t.set_mean("data", np.zeros((4, 8, 6)))
    with pytest.raises(ValueError, match="Mean shape invalid"):
        t.set_mean("data", np.zeros((1, 3, 8, 6)))
    t.set_mean("data", np.ones((8, 6)))                    # (H, W): one channel mean
    assert t.mean["data"].shape == (1, 8, 6)
    t.set_mean("data", np.full((3, 16, 12), 2.0))          # resized to the input size
    np.testing.assert_allclose(t.mean["data"], np.full((3, 8, 6), 2.0))


def test_resize_image_linear_nearest_and_constant():
    im = RNG.uniform(0, 1, size=(3, 5, 2)).astype(np.float32)
    up = io.resize_image(im, (6, 10))
    # doubling: output pixel i sits at input coordinate (i + 0.5) / 2 - 0.5
    ys = np.clip((np.arange(6) + 0.5) / 2 - 0.5, 0, 2)
    xs = np.clip((np.arange(10) + 0.5) / 2 - 0.5, 0, 4)
    ref = np.empty((6, 10, 2))
    for c in range(2):
        rows = np.array([np.interp(xs, np.arange(5), im[r, :, c]) for r in range(3)])
        ref[:, :, c] = np.array([np.interp(ys, np.arange(3), rows[:, j])
                                 for j in range(10)]).T
    np.testing.assert_allclose(up, ref, atol=1e-6)
    near = io.resize_image(im, (6, 10), interp_order=0)
    np.testing.assert_array_equal(near, np.repeat(np.repeat(im, 2, 0), 2, 1))
    const = io.resize_image(np.full((4, 4, 3), 0.3), (2, 7))
    assert const.shape == (2, 7, 3) and np.all(const == np.float32(0.3))
    assert io.resize_image(im, (3, 5)).dtype == np.float32


def test_oversample_corners_centre_and_mirrors():
    ims = [RNG.uniform(size=(6, 7, 3)).astype(np.float32) for _ in range(2)]
    crops = io.oversample(ims, (4, 4))
    assert crops.shape == (20, 4, 4, 3)
    for n, im in enumerate(ims):
        want = [im[:4, :4], im[:4, 3:7], im[2:6, :4], im[2:6, 3:7], im[1:5, 1:5]]
        for k, w in enumerate(want):
            np.testing.assert_array_equal(crops[10 * n + k], w)
            np.testing.assert_array_equal(crops[10 * n + 5 + k], w[:, ::-1])


def test_load_image(tmp_path):
    from PIL import Image
    rgb = RNG.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((5, 4), 7, np.uint8)])).save(tmp_path / "a.png")
    gray = RNG.integers(0, 256, size=(5, 4), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    im = io.load_image(str(tmp_path / "rgb.png"))
    assert im.dtype == np.float32 and im.shape == (5, 4, 3)
    np.testing.assert_allclose(im, rgb / 255.0, atol=1e-7)
    np.testing.assert_allclose(io.load_image(str(tmp_path / "a.png")), rgb / 255.0, atol=1e-7)
    g = io.load_image(str(tmp_path / "g.png"))
    assert g.shape == (5, 4, 3)
    np.testing.assert_allclose(g, np.repeat(gray[:, :, None] / 255.0, 3, 2), atol=1e-7)
    g1 = io.load_image(str(tmp_path / "g.png"), color=False)
    assert g1.shape == (5, 4, 1)
    np.testing.assert_allclose(g1[:, :, 0], gray / 255.0, atol=1e-7)


def test_blobprotovector_round_trip():
    arrays = [RNG.standard_normal((2, 3, 4, 5)).astype(np.float32),
              RNG.standard_normal((1, 1, 1, 7)).astype(np.float32)]
    data = io.arraylist_to_blobprotovecor_str(arrays)
    back = io.blobprotovector_str_to_arraylist(data)
    assert len(back) == 2
    for a, b in zip(arrays, back):
        assert np.asarray(b).shape == a.shape
        np.testing.assert_array_equal(b, a)
