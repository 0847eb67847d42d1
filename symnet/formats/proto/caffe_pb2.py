"""Caffe's message classes under Caffe's names, as pycaffe's generated ``caffe_pb2``.

The schema is symnet's own (``symnet.formats.proto.schema``) with Caffe's field names,
numbers and defaults, so files read and written here are byte-compatible with Caffe.
Scripts that do ``from caffe.proto import caffe_pb2`` work with
``from symnet.formats.proto import caffe_pb2`` (or pycaffe's path under symnet,
``from symnet.caffe.proto import caffe_pb2``, which re-exports this module)::

    net = caffe_pb2.NetParameter()
    blob = caffe_pb2.BlobProto()
    caffe_pb2.TRAIN, caffe_pb2.TEST            # the Phase values
    caffe_pb2.PoolingParameter.MAX             # nested enum values
"""
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper as _EnumTypeWrapper

from symnet.formats.proto import schema as _schema

_classes = _schema.message_classes()
globals().update(_classes)

DESCRIPTOR = _schema.pool().FindFileByName(_schema.FILE_NAME)

for _name in _schema.TOP_ENUMS:
    _wrapper = _EnumTypeWrapper(DESCRIPTOR.enum_types_by_name[_name])
    globals()[_name] = _wrapper
    for _value in _wrapper.DESCRIPTOR.values:
        globals()[_value.name] = _value.number

__all__ = sorted(list(_classes) + list(_schema.TOP_ENUMS)
                 + [v for vals in _schema.TOP_ENUMS.values() for v, _ in vals])

del _name, _wrapper, _value
