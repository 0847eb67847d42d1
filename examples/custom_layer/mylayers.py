"""One layer, Mish (y = x * tanh(softplus(x))), written twice.

``MishLayer`` is a Caffe Python layer: NumPy on the host, a hand-written backward.
``mish`` is a symnet symbolic layer: one line of math; symnet derives the backward
and fuses it with the neighbouring layers into generated kernels.
"""
import numpy as np

import symnet as sn


class MishLayer(object):
    """Caffe Python layer (runs unchanged under Caffe)."""

    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise ValueError("Mish takes one bottom")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        top[0].data[...] = x * np.tanh(np.logaddexp(0, x))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = bottom[0].data
            sp = np.logaddexp(0, x)
            t = np.tanh(sp)
            sig = 1 / (1 + np.exp(-x))
            bottom[0].diff[...] = top[0].diff * (t + x * (1 - t * t) * sig)


@sn.layer("Mish")
def mish(x):
    """y = x * tanh(softplus(x))"""
    return x * sn.tanh(sn.softplus(x))
