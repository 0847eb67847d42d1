"""pycaffe's ``caffe.Detector``: classify windows of images (R-CNN style), with
optional context padding around each window."""
from __future__ import annotations

import os

import numpy as np

from ..net import TEST
from . import io
from .classifier import image_transformer
from .pycaffe import Net

SELECTIVE_SEARCH = "selective_search_ijcv_with_python"


class Detector(Net):
    """``Detector(model_file, pretrained_file, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None, context_pad=None)``."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None, **kwargs):
        super().__init__(model_file, pretrained_file, TEST, **kwargs)
        self.transformer = image_transformer(self, mean, input_scale, raw_scale,
                                             channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """[(image filename, [window (ymin, xmin, ymax, xmax), ...]), ...] -> a list of
        {"window", "prediction", "filename"} dicts, one per window in order; each
        window is cropped (with context) and warped to the net's input size."""
        images_windows = [(f, [np.asarray(w) for w in ws]) for f, ws in images_windows]
        crops = []
        for filename, windows in images_windows:
            image = io.load_image(filename).astype(np.float32)
            for window in windows:
                crops.append(self.crop(image, window))
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(crops), crops[0].shape[2]) + self.blobs[in_].data.shape[2:],
                            dtype=np.float32)
        for k, c in enumerate(crops):
            caffe_in[k] = self.transformer.preprocess(in_, c)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if predictions.ndim == 4 and predictions.shape[2:] == (1, 1):
            predictions = predictions[:, :, 0, 0]
        detections, k = [], 0
        for filename, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[k],
                                   "filename": filename})
                k += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """detect_windows over Selective Search proposals; needs the
        selective_search_ijcv_with_python package (and MATLAB it calls)."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise ImportError(
                f"Detector.detect_selective_search needs the '{SELECTIVE_SEARCH}' package "
                "(https://github.com/sergeyk/selective_search_ijcv_with_python, which runs "
                "MATLAB) on sys.path; or give windows to detect_windows") from None
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows = selective_search.get_windows(image_fnames)
        return self.detect_windows(zip(image_fnames, windows))

    def crop(self, im, window):
        """The window (ymin, xmin, ymax, xmax) of ``im``; with context_pad the box
        is grown so that, warped to the input size, ``context_pad`` pixels of
        surrounding image border it (padded with the mean outside the image)."""
        window = np.asarray(window)
        crop = im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]
        if not self.context_pad:
            return crop
        size = self.crop_dims[0]
        scale = size / (1.0 * size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        centre = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(centre, 2) + scale * np.array((-half_h, -half_w,
                                                              half_h, half_w)))
        full_h, full_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        scale_h, scale_w = size / full_h, size / full_w
        pad_y = int(round(max(0, -box[0]) * scale_h))
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise ValueError(f"Detector.crop: window {window.tolist()} lies outside the image")
        crop_h = min(int(round(clip_h * scale_h)), size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), self.crop_dims[1] - pad_x)
        context = im[int(box[0]):int(box[2]), int(box[1]):int(box[3])]
        context = io.resize_image(context, (crop_h, crop_w))
        out = np.ones(tuple(self.crop_dims), dtype=np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def configure_crop(self, context_pad):
        """Crop size (H, W, K) of the input and, with context_pad, the mean in raw
        image terms that fills padding outside the image."""
        in_ = self.inputs[0]
        t = self.transformer
        inv = np.argsort(t.transpose[in_])
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv]
        self.context_pad = context_pad
        self.crop_mean = 0.0
        if context_pad and in_ in t.mean:
            mean = np.broadcast_to(t.mean[in_], self.blobs[in_].data.shape[1:])
            mean = np.array(mean, dtype=np.float32)
            if in_ in t.channel_swap:
                mean = mean[list(np.argsort(t.channel_swap[in_]))]
            mean = mean.transpose(inv)
            if in_ in t.raw_scale:
                mean = mean / t.raw_scale[in_]
            self.crop_mean = mean
