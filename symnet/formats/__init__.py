"""Caffe's file formats, independent of the net and solver that use them.

``proto``: the schema (Caffe's messages with Caffe's field names, numbers and defaults)
and ``caffe_pb2``, its generated classes. ``prototxt``: reading and writing prototxt
text, .caffemodel and .binaryproto, with errors that name file, line and column.
``upgrade``: old nets and solvers brought to the current format, as Caffe does on load.
``weights``: trained weights between .caffemodel files and a net's parameter blobs.

This package is the bottom of the front end: it imports neither ``symnet.caffe`` nor
``symnet.net`` nor ``symnet.solver``.
"""
