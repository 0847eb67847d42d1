"""caffe.Classifier and caffe.Detector on a small net with random weights, against
the same preprocessing and forward pass computed in NumPy."""
from __future__ import annotations

import numpy as np
import pytest

import symnet.caffe as caffe
from symnet.caffe import io

NET = """
name: "small"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 4 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 5
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
MEAN = np.array([0.2, 0.5, 0.4], np.float32) * 255


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net = caffe.Net(str(path), caffe.TEST, backend="numpy")
    weights = tmp_path / "net.caffemodel"
    net.save(str(weights))
    params = {k: [b.data.copy() for b in v] for k, v in net.params.items()}
    return str(path), str(weights), params


def _forward(x, params):
    """(N, 3, 6, 6) -> softmax probabilities, in NumPy."""
    W, b = params["conv"]
    conv = np.zeros((len(x), 4, 4, 4))
    for i in range(4):
        for j in range(4):
            conv[:, :, i, j] = np.einsum("nchw,ochw->no", x[:, :, i:i + 3, j:j + 3], W) + b
    conv = np.maximum(conv, 0)
    Wf, bf = params["fc"]
    fc = conv.reshape(len(x), -1) @ Wf.T + bf
    e = np.exp(fc - fc.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _prep(im):
    """Classifier's preprocessing: HWC [0, 1] RGB -> CHW BGR [0, 255] minus mean."""
    return im.transpose(2, 0, 1)[[2, 1, 0]] * 255.0 - MEAN[:, None, None]


@pytest.mark.parametrize("oversample", [True, False])
def test_classifier_predict(model, oversample):
    path, weights, params = model
    clf = caffe.Classifier(path, weights, image_dims=(8, 8), mean=MEAN, raw_scale=255,
                           channel_swap=(2, 1, 0), backend="numpy")
    rng = np.random.default_rng(1)
    images = [rng.uniform(size=(11, 9, 3)).astype(np.float32) for _ in range(3)]
    scores = clf.predict(images, oversample=oversample)
    resized = [io.resize_image(im, (8, 8)) for im in images]
    if oversample:
        crops = io.oversample(resized, (6, 6))
        ref = _forward(np.stack([_prep(c) for c in crops]), params)
        ref = ref.reshape(3, 10, 5).mean(1)
    else:
        ref = _forward(np.stack([_prep(im[1:7, 1:7]) for im in resized]), params)
    assert scores.shape == (3, 5)
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-6)


def test_detector_detect_windows(model, tmp_path):
    from PIL import Image
    path, weights, params = model
    rng = np.random.default_rng(2)
    files, arrays = [], []
    for k in range(2):
        a = rng.integers(0, 256, size=(20, 16, 3), dtype=np.uint8)
        f = str(tmp_path / f"im{k}.png")
        Image.fromarray(a).save(f)
        files.append(f)
        arrays.append(a.astype(np.float32) / 255.0)
    windows = [[(0, 0, 10, 8), (4, 3, 20, 16), (2, 2, 8, 8)], [(5, 5, 17, 12)]]
    det = caffe.Detector(path, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0),
                         backend="numpy")
    out = det.detect_windows(zip(files, windows))
    assert [d["filename"] for d in out] == [files[0]] * 3 + [files[1]]
    crops = [io.resize_image(arrays[i][w[0]:w[2], w[1]:w[3]], (6, 6))
             for i, ws in enumerate(windows) for w in ws]
    ref = _forward(np.stack([_prep(c) for c in crops]), params)
    for d, w, r in zip(out, [w for ws in windows for w in ws], ref):
        assert tuple(d["window"]) == w
        np.testing.assert_allclose(d["prediction"], r, rtol=1e-4, atol=1e-6)


def test_detector_context_pad_keeps_the_input_size(model, tmp_path):
    from PIL import Image
    path, weights, _ = model
    f = str(tmp_path / "im.png")
    Image.fromarray(np.full((20, 16, 3), 128, np.uint8)).save(f)
    det = caffe.Detector(path, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0),
                         context_pad=1, backend="numpy")
    # MEAN is in the net's (BGR) order; the padding is in the raw image's RGB [0, 1]
    np.testing.assert_allclose(det.crop_mean[0, 0], MEAN[::-1] / 255.0, rtol=1e-6)
    crop = det.crop(io.load_image(f), np.array([0, 0, 10, 8]))
    assert crop.shape == (6, 6, 3)
    # the box grows past the image's top-left corner: that border is the mean, which
    # preprocessing turns into zeros
    np.testing.assert_allclose(crop[0, 0], MEAN[::-1] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(det.transformer.preprocess("data", crop)[:, 0, 0], 0,
                               atol=1e-4)
    np.testing.assert_allclose(crop[-1, -1], 128 / 255.0, rtol=1e-6)


def test_detect_selective_search_names_the_missing_tool(model, monkeypatch):
    path, weights, _ = model
    det = caffe.Detector(path, weights, backend="numpy")
    import sys
    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python", None)
    with pytest.raises(ImportError, match="selective_search_ijcv_with_python"):
        det.detect_selective_search(["a.jpg"])
