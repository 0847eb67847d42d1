"""Caffe's protobuf schema, written by symnet with Caffe's field names and numbers."""
