"""pycaffe's ``caffe.proto.caffe_pb2``: the message classes, enums and DESCRIPTOR of
``symnet.formats.proto.caffe_pb2`` (the same objects), under pycaffe's import path."""
from symnet.formats.proto.caffe_pb2 import *  # noqa: F401,F403
from symnet.formats.proto.caffe_pb2 import DESCRIPTOR, __all__  # noqa: F401
