"""caffe.coord_map as pycaffe's python/caffe/coord_map.py computes it.

Maps through conv/pool/deconv/crop chains worked out by hand, the Crop offsets of the FCN
skip pattern (checked by building the net in dltrain: every crop fits), a crop that restores
the input exactly, and the errors with pycaffe's exception types.
"""
import numpy as np
import pytest

import dltrain_caffe.fallback  # noqa: F401  (`import caffe` even where dltrain's .pth is not installed)
import caffe
from caffe import layers as L, params as P
from caffe.coord_map import (AxisMismatchException, UndefinedMapException, compose, coord_map, coord_map_from_to,
                             crop, inverse)
from dlcore import Net


def _fcn(height=16):
    """A small FCN-16s: pad-100 first conv, two 2x poolings, a 2x upsampling fused with a skip
    from pool1, a 2x upsampling back to the input size."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, height, height]))
    n.conv1 = L.Convolution(n.data, num_output=2, kernel_size=3, pad=100)
    n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.conv2 = L.Convolution(n.pool1, num_output=2, kernel_size=5)
    n.relu2 = L.ReLU(n.conv2, in_place=True)
    n.pool2 = L.Pooling(n.relu2, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.score_fr = L.Convolution(n.pool2, num_output=3, kernel_size=1)
    n.upscore2 = L.Deconvolution(n.score_fr, convolution_param=dict(num_output=3, kernel_size=4, stride=2,
                                                                     bias_term=False))
    n.score_pool1 = L.Convolution(n.pool1, num_output=3, kernel_size=1)
    n.score_pool1c = crop(n.score_pool1, n.upscore2)
    n.fuse = L.Eltwise(n.upscore2, n.score_pool1c, operation=P.Eltwise.SUM)
    n.upscore = L.Deconvolution(n.fuse, convolution_param=dict(num_output=3, kernel_size=4, stride=2,
                                                                bias_term=False))
    n.score = crop(n.upscore, n.data)
    return n


def test_layer_maps():
    # output coordinate = a * input coordinate + b; a conv's window centre sits (k - 1) / 2 - pad in
    conv = L.Convolution(L.Input(), kernel_size=5, stride=2, pad=1).fn
    assert coord_map(conv) == (1, np.array([0.5]), np.array([-0.5]))
    dilated = L.Convolution(L.Input(), kernel_size=3, dilation=2).fn      # spans 5 inputs
    assert coord_map(dilated) == (1, 1, -2)
    deconv = L.Deconvolution(L.Input(), convolution_param=dict(kernel_size=4, stride=2, pad=1)).fn
    assert coord_map(deconv) == (1, 2, 0.5)
    pool = L.Pooling(L.Input(), kernel_size=3, stride=2).fn
    assert coord_map(pool) == (1, 0.5, -0.5)
    assert coord_map(L.ReLU(L.Input()).fn) == (None, 1, 0)
    assert coord_map(L.Crop(L.Input(), L.Input(), offset=[3, 4]).fn)[0] == 1          # crop axis 2 -> map axis 1
    np.testing.assert_array_equal(coord_map(L.Crop(L.Input(), L.Input(), offset=[3, 4]).fn)[2], [-3, -4])
    # composing and inverting
    assert compose((None, 1, 0), (1, 0.5, -1)) == (1, 0.5, -1)
    assert compose((1, 2, 3), (None, 0.5, -1)) == (1, 1.0, 1)
    assert inverse((1, 2, 3)) == (1, 0.5, -1.5)


def test_conv_pool_deconv_chain_by_hand():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=3, pad=100)       # x + 99
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)    # (x + 98.5) / 2
    n.up = L.Deconvolution(n.pool, num_output=1, kernel_size=4, stride=2)      # x + 100
    ax, a, b = coord_map_from_to(n.up, n.data)
    assert (ax, a, b) == (1, 1, -100)
    ax, a, b = coord_map_from_to(n.data, n.up)
    assert (ax, a, b) == (1, 1, 100)
    ax, a, b = coord_map_from_to(n.pool, n.data)
    assert (ax, a, b) == (1, 2, -98.5)


def test_anisotropic_and_nd_maps():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 9, 9, 9]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=[3, 5, 1], stride=[1, 2, 1], pad=[0, 2, 4])
    ax, a, b = coord_map_from_to(n.data, n.conv)      # conv coordinate = a * data coordinate + b, per axis
    assert ax == 1
    np.testing.assert_array_equal(a, [1, 0.5, 1])
    np.testing.assert_array_equal(b, [-1, 0, 4])
    ax, a, b = coord_map_from_to(n.conv, n.data)
    np.testing.assert_array_equal(a, [1, 2, 1])
    np.testing.assert_array_equal(b, [1, 0, -4])


def test_fcn_skip_crops_and_the_net_runs():
    n = _fcn()
    layers = {layer.name: layer for layer in n.to_proto().layer}
    # worked out by hand: pool1 holds input x at x/2 + 49.25, upscore2 at x/2 + 48.25; upscore at x + 98
    skip, final = layers["score_pool1c"], layers["score"]
    assert (list(skip.bottom), skip.type) == (["score_pool1", "upscore2"], "Crop")
    assert (skip.crop_param.axis, list(skip.crop_param.offset)) == (2, [1])
    assert (list(final.bottom), final.crop_param.axis, list(final.crop_param.offset)) == (["upscore", "data"], 2, [98])
    net = Net(n.to_proto(), caffe.TEST)
    out = net.forward(data=np.ones((1, 1, 16, 16), np.float32))
    assert out["score"].shape == (1, 3, 16, 16)
    assert net.blobs["score_pool1"].data.shape[2:] == (107, 107)
    assert net.blobs["upscore2"].data.shape[2:] == net.blobs["score_pool1c"].data.shape[2:] == (106, 106)


def test_the_computed_crop_restores_the_input():
    """Pad 2 then a full 3x3 'deconvolution' with centre-one kernels: the input sits at offset 2."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 5, 6]))
    n.padded = L.Convolution(n.data, num_output=1, kernel_size=3, pad=2, bias_term=False)
    n.grown = L.Deconvolution(n.padded, convolution_param=dict(num_output=1, kernel_size=3, bias_term=False))
    n.back = crop(n.grown, n.data)
    assert list(n.to_proto().layer[-1].crop_param.offset) == [2]
    net = Net(n.to_proto(), caffe.TEST)
    centre = np.zeros((1, 1, 3, 3), np.float32)
    centre[0, 0, 1, 1] = 1
    net.params["padded"][0].data[...] = centre
    net.params["grown"][0].data[...] = centre
    x = np.arange(30, dtype=np.float32).reshape(1, 1, 5, 6)
    np.testing.assert_array_equal(net.forward(data=x)["back"], x)


def test_crop_of_crop_and_pass_through():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=3, pad=4)       # x + 3
    n.relu = L.ReLU(n.conv)
    n.cropped = L.Crop(n.relu, n.data, axis=2, offset=1)                     # x + 2
    assert coord_map_from_to(n.cropped, n.data) == (1, 1, -2)
    second = crop(n.cropped, n.data)
    assert list(second.fn.params["crop_param"]["offset"]) == [2]
    # a Crop's second bottom does not map: only its first is walked
    n.other = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    n.onto_other = L.Crop(n.conv, n.other, offset=1)
    with pytest.raises(RuntimeError, match="Could not compute map between tops"):
        coord_map_from_to(n.onto_other, n.other)


def test_errors():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    n.aux = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=3)
    n.ip = L.InnerProduct(n.conv, num_output=4)
    n.gpool = L.Pooling(n.conv, pool=P.Pooling.AVE, global_pooling=True)
    # no common ancestor
    with pytest.raises(RuntimeError, match="Could not compute map between tops"):
        coord_map_from_to(n.conv, n.aux)
    # layers without a map stop the walk
    with pytest.raises(UndefinedMapException):
        coord_map(n.ip.fn)
    with pytest.raises(UndefinedMapException):
        coord_map(n.gpool.fn)
    for top in (n.ip, n.gpool):
        with pytest.raises(RuntimeError):
            coord_map_from_to(top, n.data)
    # crop(): pycaffe's asserts are AssertionErrors (raised even under python -O)
    n.down = L.Pooling(n.data, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    with pytest.raises(AssertionError, match="scale mismatch"):
        crop(n.down, n.data)
    n.bigger = L.Convolution(n.data, num_output=1, kernel_size=1, pad=3)      # x + 3: data is inside it
    with pytest.raises(AssertionError, match="cannot crop negative offset"):
        crop(n.data, n.bigger)
    n.half = L.Convolution(n.data, num_output=1, kernel_size=2)              # x - 0.5
    with pytest.raises(AssertionError, match="noninteger"):
        crop(n.data, n.half)
    n.legacy = L.Convolution(n.data, num_output=1, kernel_h=3, kernel_w=3, kernel_size=3)
    with pytest.raises(AssertionError, match="legacy _h/_w"):
        coord_map(n.legacy.fn)
    # a crop whose axis disagrees with the convolutions' axis
    n.channels_crop = L.Crop(n.conv, n.data, axis=1, offset=0)
    with pytest.raises(AxisMismatchException):
        coord_map_from_to(n.channels_crop, n.data)
