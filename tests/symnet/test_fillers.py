"""Tests for symnet.fillers (Caffe weight fillers)."""

import math

import numpy as np
import pytest

from symnet import fillers

CONV = (64, 32, 3, 3)  # count 18432, fan_in 288, fan_out 576, average 432
CONV_N = {"FAN_IN": 288.0, "FAN_OUT": 576.0, "AVERAGE": 432.0}


def rng(seed=0):
    return np.random.default_rng(seed)


ALL_FILLERS = [
    fillers.constant(0.25),
    fillers.uniform(-0.5, 0.5),
    fillers.gaussian(0.0, 0.01),
    fillers.gaussian(std=0.1, sparse=4),
    fillers.positive_unitball(),
    fillers.xavier(),
    fillers.msra(),
    fillers.bilinear(),
]


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("filler", ALL_FILLERS, ids=repr)
def test_output_contract(filler):
    shape = (8, 3, 4, 4)
    out = filler(shape, rng())
    assert isinstance(out, np.ndarray)
    assert out.shape == shape
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    assert out.flags.writeable
    assert np.all(np.isfinite(out))
    # a fresh array each call: mutating it must not affect the next call
    out[...] = 123.0
    assert not np.any(filler(shape, rng()) == 123.0)


@pytest.mark.parametrize("filler", ALL_FILLERS, ids=repr)
def test_deterministic_under_same_seed(filler):
    a = filler((8, 3, 4, 4), rng(42))
    b = filler((8, 3, 4, 4), rng(42))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "filler",
    [f for f in ALL_FILLERS if f.random],
    ids=repr,
)
def test_different_seeds_differ(filler):
    a = filler((8, 3, 4, 4), rng(1))
    b = filler((8, 3, 4, 4), rng(2))
    assert not np.array_equal(a, b)


def test_shape_accepts_list_and_numpy_ints():
    out = fillers.constant(1.0)([2, np.int64(3)], rng())
    assert out.shape == (2, 3)
    assert fillers.constant(1.0)(5, rng()).shape == (5,)


def test_type_names_and_defaults():
    assert fillers.constant().type == "constant"
    assert fillers.uniform().type == "uniform"
    assert fillers.gaussian().type == "gaussian"
    assert fillers.positive_unitball().type == "positive_unitball"
    assert fillers.xavier().type == "xavier"
    assert fillers.msra().type == "msra"
    assert fillers.bilinear().type == "bilinear"
    assert fillers.constant().value == 0.0
    assert (fillers.uniform().min, fillers.uniform().max) == (0.0, 1.0)
    g = fillers.gaussian()
    assert (g.mean, g.std, g.sparse) == (0.0, 1.0, -1)
    assert fillers.xavier().variance_norm == fillers.VarianceNorm.FAN_IN
    assert fillers.msra().variance_norm == fillers.VarianceNorm.FAN_IN
    assert all(isinstance(f, fillers.Filler) for f in ALL_FILLERS)


def test_repr():
    assert repr(fillers.constant(0.25)) == "constant(value=0.25)"
    assert repr(fillers.uniform(-1, 2)) == "uniform(min=-1.0, max=2.0)"
    assert repr(fillers.gaussian(std=0.01)) == "gaussian(mean=0.0, std=0.01, sparse=-1)"
    assert repr(fillers.xavier("average")) == "xavier(variance_norm='AVERAGE')"
    assert repr(fillers.msra(1)) == "msra(variance_norm='FAN_OUT')"
    assert repr(fillers.positive_unitball()) == "positive_unitball()"
    assert repr(fillers.bilinear()) == "bilinear()"


def test_equality_and_hash():
    assert fillers.constant(0.5) == fillers.constant(0.5)
    assert fillers.constant(0.5) != fillers.constant(0.25)
    assert fillers.xavier(0) == fillers.xavier("fan_in")
    assert fillers.xavier() != fillers.msra()
    assert len({fillers.xavier(2), fillers.xavier("AVERAGE")}) == 1


# ---------------------------------------------------------------- constant


def test_constant_exact():
    out = fillers.constant(0.25)((3, 4, 5), rng())
    assert np.all(out == np.float32(0.25))
    assert np.all(fillers.constant()((7,), rng()) == 0.0)


def test_constant_scalar_blob_and_no_rng_needed():
    out = fillers.constant(-2.0)((), None)
    assert out.shape == () and out == np.float32(-2.0)


# ---------------------------------------------------------------- uniform


def test_uniform_bounds_and_mean():
    lo, hi = -0.3, 0.7
    out = fillers.uniform(lo, hi)((100, 1000), rng())
    assert out.min() >= np.float32(lo)
    assert out.max() <= np.float32(hi)
    assert out.min() < lo + 1e-3 and out.max() > hi - 1e-3
    assert abs(out.mean() - (lo + hi) / 2) < 0.005
    assert abs(out.std() - (hi - lo) / math.sqrt(12)) < 0.005


def test_uniform_degenerate_interval():
    out = fillers.uniform(0.5, 0.5)((10,), rng())
    assert np.all(out == np.float32(0.5))


# ---------------------------------------------------------------- gaussian


def test_gaussian_statistics():
    out = fillers.gaussian(mean=1.5, std=0.2)((200, 1000), rng(3))
    assert abs(out.mean() - 1.5) < 0.002
    assert abs(out.std() / 0.2 - 1) < 0.01
    # ~68.3% within one std
    frac = np.mean(np.abs(out - 1.5) < 0.2)
    assert abs(frac - 0.6827) < 0.005


def test_gaussian_sparse_fraction():
    # 10 outputs, sparse=3 -> each weight kept with probability 0.3
    out = fillers.gaussian(std=1.0, sparse=3)((10, 20000), rng(5))
    nonzero = out != 0
    assert abs(nonzero.mean() - 0.3) < 0.005
    # mean number of non-zero inputs per output column ~= sparse
    assert abs(nonzero.sum(axis=0).mean() - 3) < 0.05
    # kept weights are still N(0, 1)
    assert abs(out[nonzero].std() - 1.0) < 0.02


def test_gaussian_sparse_extremes():
    assert np.all(fillers.gaussian(sparse=0)((4, 100), rng()) == 0)
    dense = fillers.gaussian(sparse=4)((4, 100), rng())
    assert np.count_nonzero(dense) == dense.size
    # sparse=-1 (default) is dense
    assert np.count_nonzero(fillers.gaussian()((4, 100), rng())) == 400


def test_gaussian_sparse_on_conv_blob_uses_shape0():
    out = fillers.gaussian(sparse=16)((64, 32, 3, 3), rng(9))
    assert abs(np.mean(out != 0) - 0.25) < 0.01


# ---------------------------------------------------------------- positive_unitball


@pytest.mark.parametrize("shape", [(16, 50), (8, 3, 5, 5), (5,)])
def test_positive_unitball_rows_sum_to_one(shape):
    out = fillers.positive_unitball()(shape, rng(2))
    assert np.all(out >= 0)
    assert np.all(out <= 1)
    rows = out.reshape(shape[0], -1).astype(np.float64)
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- xavier / msra


def test_fans_for_conv_ip_and_1d_blobs():
    for norm, n in CONV_N.items():
        assert fillers.xavier(norm).n_for(CONV) == n
        assert fillers.msra(norm).n_for(CONV) == n
    # InnerProduct weights (num_output, num_input)
    assert fillers.xavier("FAN_IN").n_for((20, 50)) == 50
    assert fillers.xavier("FAN_OUT").n_for((20, 50)) == 20
    assert fillers.xavier("AVERAGE").n_for((20, 50)) == 35
    # 1-D blob: fan_in = 1, fan_out = count
    assert fillers.xavier("FAN_IN").n_for((10,)) == 1
    assert fillers.xavier("FAN_OUT").n_for((10,)) == 10
    assert fillers.xavier("AVERAGE").n_for((10,)) == 5.5


@pytest.mark.parametrize("norm", ["FAN_IN", "FAN_OUT", "AVERAGE"])
def test_xavier_bounds_and_std(norm):
    f = fillers.xavier(norm)
    a = math.sqrt(3.0 / CONV_N[norm])
    assert f.scale_for(CONV) == pytest.approx(a)
    out = f(CONV, rng(11))
    assert np.abs(out).max() <= np.float32(a)
    assert np.abs(out).max() > 0.99 * a
    assert abs(out.mean()) < 0.02 * a
    # std of U(-a, a) is a / sqrt(3) = 1 / sqrt(n)
    assert out.std() == pytest.approx(1 / math.sqrt(CONV_N[norm]), rel=0.02)


@pytest.mark.parametrize("norm", ["FAN_IN", "FAN_OUT", "AVERAGE"])
def test_msra_std(norm):
    f = fillers.msra(norm)
    std = math.sqrt(2.0 / CONV_N[norm])
    assert f.std_for(CONV) == pytest.approx(std)
    out = f(CONV, rng(13))
    assert abs(out.mean()) < 0.03 * std
    assert out.std() == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize(
    "spelling, expected",
    [
        (0, "FAN_IN"),
        (1, "FAN_OUT"),
        (2, "AVERAGE"),
        ("fan_in", "FAN_IN"),
        ("Fan_Out", "FAN_OUT"),
        ("average", "AVERAGE"),
        (fillers.VarianceNorm.AVERAGE, "AVERAGE"),
        (np.int32(1), "FAN_OUT"),
    ],
)
def test_variance_norm_spellings(spelling, expected):
    assert fillers.xavier(spelling).variance_norm.name == expected
    assert fillers.msra(spelling).variance_norm.name == expected


@pytest.mark.parametrize("bad", [3, -1, "fan", "", None, True, 1.0])
def test_variance_norm_unknown(bad):
    with pytest.raises(ValueError, match="variance_norm"):
        fillers.xavier(bad)
    with pytest.raises(ValueError, match="FAN_IN"):
        fillers.msra(bad)


# ---------------------------------------------------------------- bilinear

K4 = np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])


def test_bilinear_k4_hand_computed():
    # k = 4: f = 2, c = 0.75, 1-D weights 1 - |x/2 - 0.75| = .25 .75 .75 .25
    out = fillers.bilinear()((3, 2, 4, 4), None)
    for o in range(3):
        for i in range(2):
            np.testing.assert_allclose(out[o, i], K4, rtol=0, atol=1e-7)


def test_bilinear_odd_kernels_hand_computed():
    # k = 3: f = 2, c = 0.5 -> .5 1 .5
    w3 = np.array([0.5, 1.0, 0.5])
    np.testing.assert_allclose(
        fillers.bilinear()((1, 1, 3, 3), None)[0, 0], np.outer(w3, w3), atol=1e-7
    )
    # k = 5 (upsampling by 3): f = 3, c = 2/3 -> 1/3 2/3 1 2/3 1/3
    w5 = np.array([1, 2, 3, 2, 1]) / 3
    np.testing.assert_allclose(
        fillers.bilinear()((1, 1, 5, 5), None)[0, 0], np.outer(w5, w5), atol=1e-6
    )


@pytest.mark.parametrize("k", range(1, 9))
def test_bilinear_kernel_is_symmetric(k):
    ker = fillers.bilinear()((2, 1, k, k), None)[0, 0]
    np.testing.assert_allclose(ker, ker[::-1, :], atol=1e-7)
    np.testing.assert_allclose(ker, ker[:, ::-1], atol=1e-7)
    np.testing.assert_allclose(ker, ker.T, atol=1e-7)
    assert ker.max() <= 1.0 and ker.min() > 0


def _deconv2d_single(x, ker, stride, pad):
    """Reference transposed convolution (one channel), Caffe output size."""
    h, w = x.shape
    k = ker.shape[0]
    full = np.zeros(((h - 1) * stride + k, (w - 1) * stride + k))
    for y in range(h):
        for z in range(w):
            full[y * stride : y * stride + k, z * stride : z * stride + k] += x[y, z] * ker
    return full[pad : full.shape[0] - pad, pad : full.shape[1] - pad]


def test_bilinear_stride2_deconv_upsamples_bilinearly():
    # factor 2: kernel 4, stride 2, pad 1 (Caffe's recommended setting)
    ker = fillers.bilinear()((1, 1, 4, 4), None)[0, 0].astype(np.float64)
    np.testing.assert_allclose(ker, ker[::-1, ::-1], atol=1e-7)
    # constant image -> constant interior (weights per phase sum to 1)
    up = _deconv2d_single(np.full((5, 5), 2.0), ker, stride=2, pad=1)
    assert up.shape == (10, 10)
    np.testing.assert_allclose(up[1:-1, 1:-1], 2.0, atol=1e-6)
    # a linear ramp is interpolated linearly, symmetric about its centre
    ramp = np.add.outer(np.arange(5.0), np.zeros(5))
    up = _deconv2d_single(ramp, ker, stride=2, pad=1)
    inner = up[1:-1, 1:-1]
    expected_rows = (np.arange(1, 9) - 0.5) / 2
    np.testing.assert_allclose(inner, np.add.outer(expected_rows, np.zeros(8)), atol=1e-6)


def test_bilinear_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"4-D.*3-D"):
        fillers.bilinear()((2, 4, 4), None)
    with pytest.raises(ValueError, match="square.*kernel_h=3, kernel_w=4"):
        fillers.bilinear()((2, 2, 3, 4), None)


# ---------------------------------------------------------------- from_param / get


def test_from_param_defaults_to_constant():
    assert fillers.from_param() == fillers.constant(0.0)
    assert fillers.get({}) == fillers.constant(0.0)
    assert fillers.get(None) == fillers.constant(0.0)
    assert fillers.get({"value": 0.1}) == fillers.constant(0.1)


def test_get_builds_each_type_with_caffe_fields():
    assert fillers.get({"type": "uniform", "min": -0.1, "max": 0.1}) == fillers.uniform(-0.1, 0.1)
    assert fillers.get({"type": "gaussian", "std": 0.01}) == fillers.gaussian(std=0.01)
    assert fillers.get({"type": "gaussian", "std": 0.01, "sparse": 15}).sparse == 15
    assert fillers.get({"type": "positive_unitball"}) == fillers.positive_unitball()
    assert fillers.get({"type": "xavier", "variance_norm": "AVERAGE"}) == fillers.xavier(2)
    assert fillers.get({"type": "msra", "variance_norm": 1}) == fillers.msra("FAN_OUT")
    assert fillers.get({"type": "bilinear"}) == fillers.bilinear()
    assert fillers.get("msra") == fillers.msra()
    assert fillers.from_param("xavier", variance_norm="fan_out") == fillers.xavier(1)


def test_get_passes_fillers_through():
    f = fillers.xavier()
    assert fillers.get(f) is f


def test_unused_filler_parameter_fields_are_ignored():
    # every FillerParameter field is accepted by every type, as in Caffe
    f = fillers.get({"type": "xavier", "std": 0.01, "value": 3, "min": 1, "max": 2,
                     "mean": 5, "sparse": -1})
    assert f == fillers.xavier()
    assert fillers.get({"type": "constant", "std": 0.01, "variance_norm": "AVERAGE"}) == (
        fillers.constant()
    )


def test_to_param_round_trips():
    for f in ALL_FILLERS + [fillers.xavier("AVERAGE"), fillers.msra(1)]:
        assert fillers.get(f.to_param()) == f


def test_unknown_type_lists_known_types():
    with pytest.raises(ValueError) as exc:
        fillers.get({"type": "glorot"})
    msg = str(exc.value)
    assert "'glorot'" in msg
    for name in ("constant", "uniform", "gaussian", "positive_unitball",
                 "xavier", "msra", "bilinear"):
        assert name in msg


def test_unknown_field_is_an_error():
    with pytest.raises(ValueError, match="'stdev'.*valid fields"):
        fillers.get({"type": "gaussian", "stdev": 0.01})


def test_sparse_only_supported_by_gaussian():
    with pytest.raises(ValueError, match="sparse"):
        fillers.get({"type": "xavier", "sparse": 5})
    with pytest.raises(ValueError, match="sparse"):
        fillers.from_param("constant", sparse=0)


def test_get_rejects_garbage():
    with pytest.raises(ValueError):
        fillers.get(3.5)


# ---------------------------------------------------------------- errors


def test_gaussian_rejects_non_positive_std():
    with pytest.raises(ValueError, match=r"std must be > 0.*-0\.1"):
        fillers.gaussian(std=-0.1)
    with pytest.raises(ValueError, match="std must be > 0"):
        fillers.gaussian(std=0.0)
    with pytest.raises(ValueError, match="std"):
        fillers.get({"type": "gaussian", "std": -1})


def test_gaussian_rejects_bad_sparse():
    with pytest.raises(ValueError, match="sparse"):
        fillers.gaussian(sparse=-2)
    with pytest.raises(ValueError, match=r"sparse=5 exceeds.*shape\[0\]=4"):
        fillers.gaussian(sparse=5)((4, 10), rng())


def test_uniform_rejects_min_greater_than_max():
    with pytest.raises(ValueError, match=r"min must be <= max.*min=1\.0.*max=0\.0"):
        fillers.uniform(1.0, 0.0)


def test_bad_numbers_rejected():
    with pytest.raises(ValueError, match="value"):
        fillers.constant("0.5")
    with pytest.raises(ValueError, match="finite"):
        fillers.uniform(0, float("inf"))


def test_empty_and_bad_shapes_rejected():
    with pytest.raises(ValueError, match="empty"):
        fillers.constant()((0, 3), rng())
    with pytest.raises(ValueError, match=">= 0"):
        fillers.constant()((-1, 3), rng())
    with pytest.raises(ValueError, match="tuple of ints"):
        fillers.constant()((2.5, 3), rng())
    with pytest.raises(ValueError, match="at least 1 axis"):
        fillers.xavier()((), rng())


def test_random_fillers_require_generator():
    with pytest.raises(TypeError, match="Generator"):
        fillers.xavier()((4, 4), np.random.RandomState(0))
    with pytest.raises(TypeError, match="Generator"):
        fillers.gaussian()((4, 4), None)
