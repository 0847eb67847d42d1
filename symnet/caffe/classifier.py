"""pycaffe's ``caffe.Classifier``: a Net that predicts classes of images, averaging
over ten crops (corners, centre and their mirrors) by default."""
from __future__ import annotations

import numpy as np

from ..net import TEST
from . import io
from .pycaffe import Net


def image_transformer(net, mean, input_scale, raw_scale, channel_swap):
    """The Transformer of (H, W, K) images into the net's first input, as pycaffe's
    Classifier and Detector set it up."""
    in_ = net.inputs[0]
    t = io.Transformer({in_: net.blobs[in_].data.shape})
    t.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        t.set_mean(in_, mean)
    if input_scale is not None:
        t.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        t.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        t.set_channel_swap(in_, channel_swap)
    return t


class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=None, mean=None,
    input_scale=None, raw_scale=None, channel_swap=None)``: a TEST-phase Net whose
    first input takes (H, W, K) images through a Transformer."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None, **kwargs):
        super().__init__(model_file, pretrained_file, TEST, **kwargs)
        in_ = self.inputs[0]
        self.transformer = image_transformer(self, mean, input_scale, raw_scale,
                                             channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        self.image_dims = np.array(image_dims if image_dims else self.crop_dims)

    def predict(self, inputs, oversample=True):
        """Class scores (N, classes) of the (H, W, K) images: each resized to
        image_dims, then ten crops averaged (``oversample``) or the centre crop."""
        h, w = (int(d) for d in self.image_dims)
        images = np.zeros((len(inputs), h, w, inputs[0].shape[2]), dtype=np.float32)
        for k, im in enumerate(inputs):
            images[k] = io.resize_image(im, (h, w))
        if oversample:
            images = io.oversample(images, self.crop_dims)
        else:
            centre = np.array([h, w]) / 2.0
            box = np.concatenate([centre - self.crop_dims / 2.0,
                                  centre + self.crop_dims / 2.0]).astype(int)
            images = images[:, box[0]:box[2], box[1]:box[3], :]
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(images), images.shape[3]) + tuple(images.shape[1:3]),
                            dtype=np.float32)
        for k, im in enumerate(images):
            caffe_in[k] = self.transformer.preprocess(in_, im)
        out = self.forward_all(**{in_: caffe_in})
        scores = out[self.outputs[0]]
        if oversample:
            scores = scores.reshape((len(scores) // 10, 10, -1)).mean(axis=1)
        return scores
