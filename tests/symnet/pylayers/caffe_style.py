"""Python layers written against pycaffe: `import caffe`, caffe.Layer subclasses."""
import json

import caffe
import numpy as np


class EuclideanLossLayer(caffe.Layer):
    """Caffe's pyloss example: loss = sum((a - b)^2) / N / 2."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num * top[0].diff[0]


class ScaleShift(caffe.Layer):
    """y = a * x + b per channel, with learnable a and b (blobs added in setup)."""

    def setup(self, bottom, top):
        c = bottom[0].channels
        self.blobs.add_blob(c)
        self.blobs.add_blob(c)
        init = json.loads(self.param_str or "{}")
        self.blobs[0].data[...] = init.get("a", 1.0)
        self.blobs[1].data[...] = init.get("b", 0.0)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        a = self.blobs[0].data.reshape(1, -1, 1, 1)
        b = self.blobs[1].data.reshape(1, -1, 1, 1)
        top[0].data[...] = a * bottom[0].data + b

    def backward(self, top, propagate_down, bottom):
        g = top[0].diff
        self.blobs[0].diff[...] += (g * bottom[0].data).sum(axis=(0, 2, 3))
        self.blobs[1].diff[...] += g.sum(axis=(0, 2, 3))
        if propagate_down[0]:
            bottom[0].diff[...] = g * self.blobs[0].data.reshape(1, -1, 1, 1)


class NeverSized(caffe.Layer):
    def reshape(self, bottom, top):
        pass


class Raises(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        raise RuntimeError("deliberate failure")


class WrongShape(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].reshape(3)


class Recorder:
    """A layer without tops (as Caffe Python layers that write files or logs): records
    a copy of its bottom at each forward; Caffe never calls its backward."""
    seen = []

    def setup(self, bottom, top):
        if len(top) != 0:
            raise Exception("Recorder takes no tops")

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        Recorder.seen.append(bottom[0].data.copy())

    def backward(self, top, propagate_down, bottom):
        raise AssertionError("Caffe does not call the backward of a layer without tops")
