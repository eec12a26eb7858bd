"""`caffe.proto`: `from caffe.proto import caffe_pb2` gives dltrain's caffe_pb2
(the same module object as `proto.caffe_pb2`, so its messages are the ones
dltrain's Net and solvers take)."""
import sys

from dltrain.proto import caffe_pb2

sys.modules[__name__ + ".caffe_pb2"] = caffe_pb2

__all__ = ["caffe_pb2"]
