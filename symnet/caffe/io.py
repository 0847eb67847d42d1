"""pycaffe's ``caffe.io`` helpers for blobs and images."""
from __future__ import annotations

import numpy as np

from ..formats import prototxt
from ..formats.proto import caffe_pb2


def blobproto_to_array(blob, return_diff=False):
    """A BlobProto's data (or diff) as an array of its shape."""
    if return_diff:
        diff = caffe_pb2.BlobProto()
        diff.CopyFrom(blob)
        del diff.data[:]
        del diff.double_data[:]
        diff.data.extend(blob.diff)
        diff.double_data.extend(blob.double_diff)
        return prototxt.blob_to_array(diff)
    return prototxt.blob_to_array(blob)


def array_to_blobproto(arr, diff=None):
    blob = prototxt.array_to_blob(np.asarray(arr, dtype=np.float32))
    if diff is not None:
        blob.diff.extend(np.asarray(diff, dtype=np.float32).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """Arrays serialized as one BlobProtoVector (bytes)."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


# pycaffe's spelling
arraylist_to_blobprotovecor_str = arraylist_to_blobprotovector_str


def blobprotovector_str_to_arraylist(data):
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    try:
        vec.ParseFromString(bytes(data))
    except Exception as e:      # DecodeError, or whatever the decoder raises on garbage
        raise prototxt.PrototxtError(
            f"not a serialized BlobProtoVector: the protobuf wire format is broken "
            f"({str(e) or type(e).__name__})") from None
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None):
    """A (C, H, W) array as a Datum: uint8 arrays as raw bytes, others as floats."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"array_to_datum: expected a (C, H, W) array, got shape {arr.shape}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    return np.array(datum.float_data, dtype=np.float32).reshape(shape)


# ------------------------------------------------------------------ images

def load_image(filename, color=True):
    """An image as float32 (H, W, K) in [0, 1]: RGB (K = 3), or for a grayscale file
    (H, W, 1) when ``color`` is False and tiled to 3 channels when True; an alpha
    channel is dropped. Read with Pillow, else scikit-image."""
    img = _read_image(filename)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    elif img.dtype == bool:
        img = img.astype(np.float32)
    else:
        img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def _read_image(filename):
    try:
        from PIL import Image
    except ImportError:
        try:
            import skimage.io
        except ImportError:
            raise ImportError("caffe.io.load_image needs Pillow (pip install Pillow, or "
                              "pip install 'symnet[data]') or scikit-image") from None
        return np.asarray(skimage.io.imread(filename))
    with Image.open(filename) as im:
        if im.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(im, dtype=np.uint16)
        if im.mode == "1":
            return np.asarray(im.convert("L"))
        if im.mode not in ("L", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.mode else "RGB")
        return np.asarray(im)


def _linear_axis(n_in, n_out):
    """Source indices and weights of linear interpolation along one axis (pixel
    centres aligned, edges clamped)."""
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (x - lo).astype(np.float64)


def resize_image(im, new_dims, interp_order=1):
    """(H, W, K) ``im`` resized to ``new_dims`` = (height, width): interp_order 0 is
    nearest neighbour, 1 (default) bilinear, higher orders spline (SciPy)."""
    im = np.asarray(im)
    h, w = int(new_dims[0]), int(new_dims[1])
    if im.ndim != 3:
        raise ValueError(f"resize_image: expected an (H, W, K) array, got shape {im.shape}")
    if im.shape[:2] == (h, w):
        return im.astype(np.float32)
    lo_v, hi_v = im.min(), im.max()
    if hi_v == lo_v:                          # a constant image stays constant
        return np.full((h, w, im.shape[2]), lo_v, dtype=np.float32)
    src = im.astype(np.float64)
    if interp_order == 0:
        ys = np.minimum(((np.arange(h) + 0.5) * im.shape[0] / h).astype(int), im.shape[0] - 1)
        xs = np.minimum(((np.arange(w) + 0.5) * im.shape[1] / w).astype(int), im.shape[1] - 1)
        return src[ys][:, xs].astype(np.float32)
    if interp_order == 1:
        y0, y1, wy = _linear_axis(im.shape[0], h)
        x0, x1, wx = _linear_axis(im.shape[1], w)
        rows = src[y0] * (1 - wy)[:, None, None] + src[y1] * wy[:, None, None]
        out = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
        return out.astype(np.float32)
    try:
        from scipy.ndimage import zoom
    except ImportError:
        raise ImportError(f"resize_image: interp_order {interp_order} needs SciPy "
                          "(pip install scipy); orders 0 and 1 do not") from None
    scale = (h / im.shape[0], w / im.shape[1], 1)
    return zoom(src, scale, order=interp_order).astype(np.float32)


def oversample(images, crop_dims):
    """The four corner crops and the centre crop of each (H, W, K) image, then the
    same five mirrored left-right: (10 * N, crop_h, crop_w, K) float32."""
    images = [np.asarray(im) for im in images]
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims, dtype=int)
    boxes = []
    for y in (0, im_shape[0] - crop_dims[0]):
        for x in (0, im_shape[1] - crop_dims[1]):
            boxes.append((y, x))
    centre = im_shape[:2] / 2.0 - crop_dims / 2.0
    boxes.append((int(centre[0]), int(centre[1])))
    out = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), np.float32)
    k = 0
    for im in images:
        crops = [im[y:y + crop_dims[0], x:x + crop_dims[1], :] for y, x in boxes]
        for c in crops:
            out[k] = c
            k += 1
        for c in crops:
            out[k] = c[:, ::-1, :]
            k += 1
    return out


# ------------------------------------------------------------------ Transformer

class Transformer:
    """Prepares images for a net's inputs and back (pycaffe's ``caffe.io.Transformer``).

    ``Transformer({"data": net.blobs["data"].data.shape})``; preprocess runs, in order:
    float32, resize to the input's (H, W), transpose, channel swap, raw scale, mean
    subtraction, input scale. deprocess undoes them in reverse."""

    def __init__(self, inputs):
        self.inputs = {k: tuple(int(d) for d in v) for k, v in dict(inputs).items()}
        self.transpose, self.channel_swap, self.raw_scale = {}, {}, {}
        self.mean, self.input_scale = {}, {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise Exception(f"{in_} is not one of the net inputs: {list(self.inputs)}")

    def preprocess(self, in_, data):
        """(H', W', K) ``data`` as the (K, H, W) array the net's input ``in_`` takes."""
        self._check_input(in_)
        x = np.array(data, dtype=np.float32)          # a copy: the caller's image stays
        in_dims = self.inputs[in_][2:]
        if x.shape[:2] != in_dims:
            x = resize_image(x, in_dims)
        if in_ in self.transpose:
            x = x.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            x = x[list(self.channel_swap[in_]), :, :]
        if in_ in self.raw_scale:
            x *= self.raw_scale[in_]
        if in_ in self.mean:
            x -= self.mean[in_]
        if in_ in self.input_scale:
            x *= self.input_scale[in_]
        return np.ascontiguousarray(x, dtype=np.float32)

    def deprocess(self, in_, data):
        """The inverse of preprocess (without the resize): net input -> image."""
        self._check_input(in_)
        x = np.array(data, dtype=np.float32).squeeze()
        if in_ in self.input_scale:
            x /= self.input_scale[in_]
        if in_ in self.mean:
            x += self.mean[in_]
        if in_ in self.raw_scale:
            x /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            x = x[list(np.argsort(self.channel_swap[in_])), :, :]
        if in_ in self.transpose:
            x = x.transpose(np.argsort(self.transpose[in_]))
        return x

    def set_transpose(self, in_, order):
        """The order of the image's axes in the net input, e.g. (2, 0, 1) for HWC ->
        CHW."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception("Transpose order needs to have the same number of dimensions "
                            "as the input.")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order):
        """Reorder channels (after the transpose), e.g. (2, 1, 0) for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception("Channel swap needs to have the same number of dimensions as "
                            "the input channels.")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale):
        """Multiply the image by ``scale`` before the mean (255 for [0, 1] images and
        nets trained on [0, 255])."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean to subtract: per channel (K,) or a full (K, H, W) / (H, W) mean (one
        channel applies to all); a full mean of another (H, W) is resized to the
        input's."""
        self._check_input(in_)
        mean = np.asarray(mean, dtype=np.float32)
        shape = self.inputs[in_]
        if mean.ndim == 1:
            if mean.shape[0] != shape[1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, None, None]
        else:
            if mean.ndim == 2:
                mean = mean[None]
            if mean.ndim != 3:
                raise ValueError("Mean shape invalid")
            if mean.shape[0] not in (1, shape[1]):        # one channel broadcasts
                raise ValueError("Mean shape incompatible with input shape.")
            if mean.shape[1:] != shape[2:]:
                mean = resize_image(mean.transpose(1, 2, 0), shape[2:]).transpose(2, 0, 1)
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply the input by ``scale`` after the mean subtraction."""
        self._check_input(in_)
        self.input_scale[in_] = scale
