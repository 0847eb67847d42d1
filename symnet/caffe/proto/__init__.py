"""pycaffe's ``caffe.proto`` package: ``caffe_pb2`` here is ``symnet.formats.proto.caffe_pb2``."""
