"""pycaffe's ``caffe.Classifier``: a Net that predicts classes of images, averaging
over ten crops (corners, centre and their mirrors) by default."""
from __future__ import annotations

import numpy as np

from ..net import TEST
from . import io
from .pycaffe import Net


def forward_all(net, **inputs):
    """Run ``net`` over inputs longer than its batch, batch by batch (the last batch
    padded with zeros); {output blob: array of len(input)}. Uses ``net.forward_all``
    when the Net has one."""
    fn = getattr(net, "forward_all", None)
    if fn is not None:
        return fn(**inputs)
    n = {len(v) for v in inputs.values()}
    if len(n) != 1:
        raise ValueError("forward_all: the inputs differ in length")
    n = n.pop()
    batch = net.blobs[next(iter(inputs))].data.shape[0]
    outs = {name: [] for name in net.outputs}
    for start in range(0, n, batch):
        for name, value in inputs.items():
            chunk = np.asarray(value[start:start + batch], dtype=np.float32)
            blob = net.blobs[name].data
            blob[...] = 0
            blob[:len(chunk)] = chunk
        result = net.forward()
        for name in outs:
            outs[name].append(np.array(result[name][:min(batch, n - start)]))
    return {name: np.concatenate(v) for name, v in outs.items()}


class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=None, mean=None,
    input_scale=None, raw_scale=None, channel_swap=None)``: a TEST-phase Net whose
    first input takes (H, W, K) images through a Transformer."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None, **kwargs):
        super().__init__(model_file, pretrained_file, TEST, **kwargs)
        in_ = self.inputs[0]
        self.transformer = io.Transformer({in_: self.blobs[in_].data.shape})
        self.transformer.set_transpose(in_, (2, 0, 1))
        if mean is not None:
            self.transformer.set_mean(in_, mean)
        if input_scale is not None:
            self.transformer.set_input_scale(in_, input_scale)
        if raw_scale is not None:
            self.transformer.set_raw_scale(in_, raw_scale)
        if channel_swap is not None:
            self.transformer.set_channel_swap(in_, channel_swap)
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
        out = forward_all(self, **{in_: caffe_in})
        scores = out[self.outputs[0]]
        if oversample:
            scores = scores.reshape((len(scores) // 10, 10, -1)).mean(axis=1)
        return scores
