"""Old formats (dlcore/upgrade.py, Caffe's upgrade_proto.cpp and test_upgrade_proto.cpp):
V0 and V1 nets, input fields, data transformation fields, BatchNorm param specs,
solver_type; text and binary; Net loading, Net.copy_from, and `dltrain upgrade`."""
import os

import numpy as np
import pytest

import dltrain.layers  # noqa: F401  (registers the layer types)
from dltrain.cli.main import main as dltrain
from dlcore import TEST, TRAIN, ConfigError, Net
from dlcore import upgrade
from dlcore.config import load_net, net_from_string, solver_from_string, to_prototxt
from dltrain.proto import caffe_pb2


def net(text):
    return net_from_string(text)


def assert_same(actual, expected_text):
    expected = net(expected_text)
    assert to_prototxt(actual) == to_prototxt(expected)


# --- V0 -> V1 (Caffe's PaddingLayerUpgradeTest and NetUpgradeTest) -----------------------------------
V0_CONV = """
  layer {{ name: '{name}' type: 'conv' num_output: 96 kernelsize: 11 stride: 4
          weight_filler {{ type: 'gaussian' std: 0.01 }} bias_filler {{ type: 'constant' value: 0. }}
          blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. }}"""

V0_PADDED = f"""
name: 'CaffeNet'
layers {{ layer {{ name: 'data' type: 'data' source: '/home/jiayq/Data/ILSVRC12/train-leveldb'
          meanfile: '/home/jiayq/Data/ILSVRC12/image_mean.binaryproto' batchsize: 256 cropsize: 227
          mirror: true }} top: 'data' top: 'label' }}
layers {{ layer {{ name: 'pad1' type: 'padding' pad: 2 }} bottom: 'data' top: 'pad1' }}
layers {{ {V0_CONV.format(name='conv1')} bottom: 'pad1' top: 'conv1' }}
layers {{ layer {{ name: 'fc8' type: 'innerproduct' num_output: 1000
          weight_filler {{ type: 'gaussian' std: 0.01 }} bias_filler {{ type: 'constant' value: 0 }}
          blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. }} bottom: 'conv1' top: 'fc8' }}
layers {{ {V0_CONV.format(name='conv2')} bottom: 'pad1' top: 'conv2' }}
layers {{ layer {{ name: 'loss' type: 'softmax_loss' }} bottom: 'fc8' bottom: 'label' }}
"""


def test_v0_padding_layers_fold_into_the_convolutions_that_read_them():
    """Caffe's PaddingLayerUpgradeTest.TestTwoTops: both readers of the padding layer get its pad."""
    out = upgrade.upgrade_v0_padding_layers(net(V0_PADDED))
    assert [l.layer.name for l in out.layers] == ["data", "conv1", "fc8", "conv2", "loss"]
    for name in ("conv1", "conv2"):
        layer = next(l for l in out.layers if l.layer.name == name)
        assert layer.layer.pad == 2 and list(layer.bottom) == ["data"]
    # Idempotent, as Caffe's test checks.
    assert upgrade.upgrade_v0_padding_layers(out) == out


def test_v0_padding_into_a_non_conv_layer_is_an_error():
    text = """layers { layer { name: 'd' type: 'data' source: 's' batchsize: 1 } top: 'data' }
              layers { layer { name: 'pad' type: 'padding' pad: 1 } bottom: 'data' top: 'p' }
              layers { layer { name: 'r' type: 'relu' } bottom: 'p' top: 'p' }"""
    with pytest.raises(ConfigError, match="padding layer feeds a 'relu' layer"):
        upgrade.upgrade_v0_padding_layers(net(text))


def test_v0_net_upgrades_to_v1_as_caffe_does():
    """The V1 form of Caffe's NetUpgradeTest.TestImageNet (first layers): data transform fields go to
    transform_param, per-type fields to the type's parameter message."""
    v1 = upgrade.upgrade_v0_net(net(V0_PADDED))
    assert_same(v1, """
name: 'CaffeNet'
layers { name: 'data' type: DATA
         data_param { source: '/home/jiayq/Data/ILSVRC12/train-leveldb' batch_size: 256 }
         transform_param { crop_size: 227 mirror: true mean_file: '/home/jiayq/Data/ILSVRC12/image_mean.binaryproto' }
         top: 'data' top: 'label' }
layers { name: 'conv1' type: CONVOLUTION
         convolution_param { num_output: 96 kernel_size: 11 stride: 4 pad: 2
           weight_filler { type: 'gaussian' std: 0.01 } bias_filler { type: 'constant' value: 0. } }
         blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. bottom: 'data' top: 'conv1' }
layers { name: 'fc8' type: INNER_PRODUCT
         inner_product_param { num_output: 1000 weight_filler { type: 'gaussian' std: 0.01 }
           bias_filler { type: 'constant' value: 0 } }
         blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. bottom: 'conv1' top: 'fc8' }
layers { name: 'conv2' type: CONVOLUTION
         convolution_param { num_output: 96 kernel_size: 11 stride: 4 pad: 2
           weight_filler { type: 'gaussian' std: 0.01 } bias_filler { type: 'constant' value: 0. } }
         blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. bottom: 'data' top: 'conv2' }
layers { name: 'loss' type: SOFTMAX_LOSS bottom: 'fc8' bottom: 'label' }
""")


def test_v0_all_parameters():
    """After Caffe's NetUpgradeTest.TestAllParams: every V0 field lands in its V1 place."""
    v0 = net("""
name: 'CaffeNet'
input: 'input_data' input_dim: 64 input_dim: 3 input_dim: 32 input_dim: 32
layers { layer { name: 'data' type: 'data' source: '/my/source' meanfile: '/my/mean' batchsize: 256
                 cropsize: 227 mirror: true scale: 0.25 rand_skip: 73 } top: 'data' top: 'label' }
layers { layer { name: 'images' type: 'images' source: '/my/images' meanfile: '/my/mean' batchsize: 256
                 cropsize: 227 mirror: true scale: 0.25 rand_skip: 73 shuffle_images: true new_height: 40
                 new_width: 30 } top: 'images_data' top: 'images_label' }
layers { layer { name: 'window_data' type: 'window_data' source: '/my/windows' meanfile: '/my/mean'
                 batchsize: 256 cropsize: 227 mirror: true det_fg_threshold: 0.25 det_bg_threshold: 0.75
                 det_fg_fraction: 0.5 det_context_pad: 16 det_crop_mode: 'square' }
         top: 'window_data' top: 'window_label' }
layers { layer { name: 'hdf5data' type: 'hdf5_data' source: '/my/hdf5/data' batchsize: 256 } top: 'hdf5data' }
layers { layer { name: 'conv1' type: 'conv' num_output: 96 biasterm: false pad: 4 kernelsize: 11 stride: 4
                 weight_filler { type: 'gaussian' std: 0.01 } bias_filler { type: 'constant' value: 3. }
                 blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. } bottom: 'data' top: 'conv1' }
layers { layer { name: 'pool1ave' type: 'pool' pool: AVE kernelsize: 3 stride: 2 } bottom: 'conv1' top: 'pool1ave' }
layers { layer { name: 'pool1stoch' type: 'pool' pool: STOCHASTIC kernelsize: 4 stride: 5 }
         bottom: 'conv1' top: 'pool1stoch' }
layers { layer { name: 'concat' type: 'concat' concat_dim: 2 } bottom: 'pool1ave' bottom: 'pool1stoch'
         top: 'pool1concat' }
layers { layer { name: 'norm1' type: 'lrn' local_size: 5 alpha: 0.0001 beta: 0.75 } bottom: 'pool1concat'
         top: 'norm1' }
layers { layer { name: 'fc6' type: 'innerproduct' num_output: 4096 biasterm: false } bottom: 'norm1' top: 'fc6' }
layers { layer { name: 'drop6' type: 'dropout' dropout_ratio: 0.2 } bottom: 'fc6' top: 'fc6' }
layers { layer { name: 'loss' type: 'infogain_loss' source: '/my/infogain/matrix' } bottom: 'fc6' bottom: 'label' }
layers { layer { name: 'hdf5_output' type: 'hdf5_output' hdf5_output_param { file_name: '/my/out' } } }
layers { layer { name: 'tanh' type: 'tanh' } }
""")
    problems = []
    v1 = upgrade.upgrade_v0_net(v0, problems=problems)
    assert problems == []
    assert_same(v1, """
name: 'CaffeNet'
input: 'input_data' input_dim: 64 input_dim: 3 input_dim: 32 input_dim: 32
layers { name: 'data' type: DATA data_param { source: '/my/source' batch_size: 256 rand_skip: 73 }
         transform_param { crop_size: 227 mirror: true scale: 0.25 mean_file: '/my/mean' }
         top: 'data' top: 'label' }
layers { name: 'images' type: IMAGE_DATA
         image_data_param { source: '/my/images' batch_size: 256 rand_skip: 73 shuffle: true new_height: 40
                            new_width: 30 }
         transform_param { mean_file: '/my/mean' crop_size: 227 mirror: true scale: 0.25 }
         top: 'images_data' top: 'images_label' }
layers { name: 'window_data' type: WINDOW_DATA
         window_data_param { source: '/my/windows' batch_size: 256 fg_threshold: 0.25 bg_threshold: 0.75
                             fg_fraction: 0.5 context_pad: 16 crop_mode: 'square' }
         transform_param { mirror: true crop_size: 227 mean_file: '/my/mean' }
         top: 'window_data' top: 'window_label' }
layers { name: 'hdf5data' type: HDF5_DATA hdf5_data_param { source: '/my/hdf5/data' batch_size: 256 }
         top: 'hdf5data' }
layers { name: 'conv1' type: CONVOLUTION
         convolution_param { num_output: 96 bias_term: false pad: 4 kernel_size: 11 stride: 4
           weight_filler { type: 'gaussian' std: 0.01 } bias_filler { type: 'constant' value: 3. } }
         blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. bottom: 'data' top: 'conv1' }
layers { name: 'pool1ave' type: POOLING pooling_param { pool: AVE kernel_size: 3 stride: 2 }
         bottom: 'conv1' top: 'pool1ave' }
layers { name: 'pool1stoch' type: POOLING pooling_param { pool: STOCHASTIC kernel_size: 4 stride: 5 }
         bottom: 'conv1' top: 'pool1stoch' }
layers { name: 'concat' type: CONCAT concat_param { concat_dim: 2 } bottom: 'pool1ave' bottom: 'pool1stoch'
         top: 'pool1concat' }
layers { name: 'norm1' type: LRN lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } bottom: 'pool1concat'
         top: 'norm1' }
layers { name: 'fc6' type: INNER_PRODUCT inner_product_param { num_output: 4096 bias_term: false }
         bottom: 'norm1' top: 'fc6' }
layers { name: 'drop6' type: DROPOUT dropout_param { dropout_ratio: 0.2 } bottom: 'fc6' top: 'fc6' }
layers { name: 'loss' type: INFOGAIN_LOSS infogain_loss_param { source: '/my/infogain/matrix' }
         bottom: 'fc6' bottom: 'label' }
layers { name: 'hdf5_output' type: HDF5_OUTPUT hdf5_output_param { file_name: '/my/out' } }
layers { name: 'tanh' type: TANH }
""")


def test_v0_field_that_does_not_fit_the_type_is_reported_and_skipped():
    problems = []
    v1 = upgrade.upgrade_v0_net(net("layers { layer { name: 'r' type: 'relu' num_output: 3 } }"),
                                problems=problems)
    assert problems == ["V0 layer 'r': unknown parameter num_output for layer type relu"]
    assert v1.layers[0].type == caffe_pb2.V1LayerParameter.RELU
    assert not v1.layers[0].HasField("convolution_param")


def test_v0_unknown_type_is_an_error():
    with pytest.raises(ConfigError, match="unknown layer type 'convolution'"):
        upgrade.upgrade_v0_net(net("layers { layer { name: 'c' type: 'convolution' } }"))


# --- data transformation ---------------------------------------------------------------------------
def test_v1_data_transform_fields_move_to_transform_param():
    v1 = net("""
layers { name: 'data' type: DATA data_param { source: 's' batch_size: 4 scale: 0.5 mean_file: 'm'
                                              crop_size: 3 mirror: true } top: 'data' }
layers { name: 'img' type: IMAGE_DATA image_data_param { source: 'l' scale: 2 } top: 'i' }
layers { name: 'win' type: WINDOW_DATA window_data_param { source: 'w' mirror: false crop_size: 5 } top: 'w' }
layers { name: 'hdf5' type: HDF5_DATA hdf5_data_param { source: 'h' } top: 'h' }""")
    assert upgrade.net_needs_data_upgrade(v1)
    upgrade.upgrade_net_data_transformation(v1)
    assert not upgrade.net_needs_data_upgrade(v1)
    assert_same(v1, """
layers { name: 'data' type: DATA data_param { source: 's' batch_size: 4 }
         transform_param { scale: 0.5 mean_file: 'm' crop_size: 3 mirror: true } top: 'data' }
layers { name: 'img' type: IMAGE_DATA image_data_param { source: 'l' } transform_param { scale: 2 } top: 'i' }
layers { name: 'win' type: WINDOW_DATA window_data_param { source: 'w' }
         transform_param { mirror: false crop_size: 5 } top: 'w' }
layers { name: 'hdf5' type: HDF5_DATA hdf5_data_param { source: 'h' } top: 'h' }""")


def test_current_data_layer_fields_are_not_moved():
    """As in Caffe, only V1 layers are upgraded; a current Data layer's data_param.scale stays (and the
    Data layer warns that it is ignored)."""
    param = net("layer { name: 'd' type: 'Data' data_param { source: 's' scale: 0.5 } top: 'd' }")
    assert not upgrade.net_needs_upgrade(param)


# --- V1 -> current ------------------------------------------------------------------------------------
V1_NET = """
name: 'CaffeNet'
layers { name: 'data' type: DATA data_param { source: 'train-leveldb' batch_size: 256 }
         transform_param { crop_size: 227 mirror: true mean_file: 'mean.binaryproto' }
         top: 'data' top: 'label' include { phase: TRAIN } }
layers { name: 'conv1' type: CONVOLUTION
         convolution_param { num_output: 96 kernel_size: 11 stride: 4
           weight_filler { type: 'gaussian' std: 0.01 } bias_filler { type: 'constant' value: 0. } }
         blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. bottom: 'data' top: 'conv1' }
layers { name: 'relu1' type: RELU bottom: 'conv1' top: 'conv1' }
layers { name: 'pool1' type: POOLING pooling_param { pool: MAX kernel_size: 3 stride: 2 }
         bottom: 'conv1' top: 'pool1' }
layers { name: 'fc8' type: INNER_PRODUCT param: 'shared_w' param: 'shared_b'
         blob_share_mode: STRICT blob_share_mode: PERMISSIVE
         inner_product_param { num_output: 1000 } blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         bottom: 'pool1' top: 'fc8' }
layers { name: 'loss' type: SOFTMAX_LOSS bottom: 'fc8' bottom: 'label' loss_weight: 2
         exclude { phase: TEST } loss_param { ignore_label: 3 } }
"""

V2_NET = """
name: 'CaffeNet'
layer { name: 'data' type: 'Data' data_param { source: 'train-leveldb' batch_size: 256 }
        transform_param { crop_size: 227 mirror: true mean_file: 'mean.binaryproto' }
        top: 'data' top: 'label' include { phase: TRAIN } }
layer { name: 'conv1' type: 'Convolution'
        convolution_param { num_output: 96 kernel_size: 11 stride: 4
          weight_filler { type: 'gaussian' std: 0.01 } bias_filler { type: 'constant' value: 0. } }
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } bottom: 'data' top: 'conv1' }
layer { name: 'relu1' type: 'ReLU' bottom: 'conv1' top: 'conv1' }
layer { name: 'pool1' type: 'Pooling' pooling_param { pool: MAX kernel_size: 3 stride: 2 }
        bottom: 'conv1' top: 'pool1' }
layer { name: 'fc8' type: 'InnerProduct'
        param { name: 'shared_w' share_mode: STRICT lr_mult: 1 decay_mult: 1 }
        param { name: 'shared_b' share_mode: PERMISSIVE lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 1000 } bottom: 'pool1' top: 'fc8' }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'fc8' bottom: 'label' loss_weight: 2
        exclude { phase: TEST } loss_param { ignore_label: 3 } }
"""


def test_v1_net_upgrades_to_the_current_format():
    param = net(V1_NET)
    assert upgrade.upgrade_net_as_needed(param, notice=False) == ["V1LayerParameter layers"]
    assert_same(param, V2_NET)
    assert not upgrade.net_needs_upgrade(param)


def test_every_v1_type_maps_to_a_registered_layer_type():
    """Caffe's NetUpgradeTest.TestUpgradeV1LayerType: each V1 enum value names a registered type."""
    import dlcore
    known = set(dlcore.layer_types())
    for value in caffe_pb2.V1LayerParameter.LayerType.values():
        name = upgrade.upgrade_v1_layer_type(value)
        if value == caffe_pb2.V1LayerParameter.NONE:
            assert name == ""
        else:
            assert name in known, (caffe_pb2.V1LayerParameter.LayerType.Name(value), name)


def test_v1_and_current_layers_together_keeps_only_the_v1_ones(capsys):
    """Caffe ignores 'layer' entries when 'layers' are there (and logs an error)."""
    param = net("layer { name: 'x' type: 'ReLU' } layers { name: 'r' type: RELU }")
    upgrade.upgrade_net_as_needed(param, path="mixed.prototxt")
    assert [l.name for l in param.layer] == ["r"]
    assert "'layer' entries are ignored" in capsys.readouterr().err


def test_v0_net_all_the_way_to_the_current_format_builds_a_net(capsys):
    text = """
name: 'tiny'
input: 'data' input_dim: 2 input_dim: 1 input_dim: 6 input_dim: 6
layers { layer { name: 'pad1' type: 'padding' pad: 1 } bottom: 'data' top: 'pad1' }
layers { layer { name: 'conv1' type: 'conv' num_output: 3 kernelsize: 3 stride: 1
                 weight_filler { type: 'gaussian' std: 0.1 } blobs_lr: 1 blobs_lr: 2 } bottom: 'pad1' top: 'conv1' }
layers { layer { name: 'relu1' type: 'relu' } bottom: 'conv1' top: 'conv1' }
layers { layer { name: 'pool1' type: 'pool' pool: MAX kernelsize: 2 stride: 2 } bottom: 'conv1' top: 'pool1' }
layers { layer { name: 'fc' type: 'innerproduct' num_output: 4 weight_filler { type: 'gaussian' std: 0.1 } }
         bottom: 'pool1' top: 'fc' }
layers { layer { name: 'prob' type: 'softmax' } bottom: 'fc' top: 'prob' }
"""
    n = Net(net(text), TEST)
    assert n.layer_names == ["input", "conv1", "relu1", "pool1", "fc", "prob"]
    assert n.blobs["conv1"].shape == (2, 3, 6, 6)          # the padding layer's pad went to conv1
    assert n.blobs["prob"].shape == (2, 4)
    assert n.params_lr[:2] == [1.0, 2.0]
    err = capsys.readouterr().err
    assert "upgraded deprecated V0LayerParameter layers, V1LayerParameter layers, input fields" in err
    assert len([line for line in err.splitlines() if "upgraded deprecated" in line]) == 1


def test_upgraded_v1_net_keeps_phase_rules_multipliers_and_loss_weights():
    text = """
layers { name: 'data' type: DUMMY_DATA top: 'data' top: 'label' include { phase: TRAIN }
         dummy_data_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } shape { dim: 2 } } }
layers { name: 'input' type: DUMMY_DATA top: 'data' top: 'label' include { phase: TEST }
         dummy_data_param { shape { dim: 1 dim: 3 dim: 5 dim: 5 } shape { dim: 1 } } }
layers { name: 'conv' type: CONVOLUTION convolution_param { num_output: 2 kernel_size: 3 }
         blobs_lr: 0.5 blobs_lr: 2 weight_decay: 3 bottom: 'data' top: 'conv' }
layers { name: 'fc' type: INNER_PRODUCT inner_product_param { num_output: 3 } bottom: 'conv' top: 'fc' }
layers { name: 'loss' type: SOFTMAX_LOSS bottom: 'fc' bottom: 'label' loss_weight: 2 exclude { phase: TEST } }
"""
    train, test = Net(net(text), TRAIN), Net(net(text), TEST)
    assert train.layer_names == ["data", "conv", "fc", "loss"]
    assert test.layer_names == ["input", "conv", "fc"]
    assert train.params_lr == [0.5, 2.0, 1.0, 1.0] and train.params_weight_decay[:2] == [3.0, 1.0]
    assert train.layers[-1].loss_weights[0] == 2.0
    assert train.blobs["conv"].shape == (2, 2, 3, 3) and test.blobs["fc"].shape == (1, 3)


# --- input fields -------------------------------------------------------------------------------------
def test_input_dim_and_input_shape_become_an_input_layer_first():
    param = net("name: 'n' layer { name: 'r' type: 'ReLU' bottom: 'a' top: 'r' }"
                "input: 'a' input: 'b' input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4 "
                "input_dim: 5 input_dim: 6 input_dim: 7 input_dim: 8")
    upgrade.upgrade_net_input(param)
    assert_same(param, """name: 'n'
layer { name: 'input' type: 'Input' top: 'a' top: 'b'
        input_param { shape { dim: 1 dim: 2 dim: 3 dim: 4 } shape { dim: 5 dim: 6 dim: 7 dim: 8 } } }
layer { name: 'r' type: 'ReLU' bottom: 'a' top: 'r' }""")
    param = net("input: 'a' input_shape { dim: 3 dim: 2 }")
    upgrade.upgrade_net_input(param)
    assert_same(param, "layer { name: 'input' type: 'Input' top: 'a' input_param { shape { dim: 3 dim: 2 } } }")


def test_input_without_shape_is_dropped():
    """What old .caffemodel files hold: input names only (Caffe just clears them)."""
    param = net("input: 'data' layer { name: 'r' type: 'ReLU' bottom: 'data' top: 'r' }")
    upgrade.upgrade_net_input(param)
    assert_same(param, "layer { name: 'r' type: 'ReLU' bottom: 'data' top: 'r' }")


@pytest.mark.parametrize("text, message", [
    ("input: 'a' input_dim: 1 input_dim: 2", "input_dim needs 4 values per input"),
    ("input: 'a' input_dim: 1 input_dim: 2 input_dim: 1 input_dim: 2 input_shape { dim: 1 }", "not both"),
    ("input: 'a' input: 'b' input: 'c' input_shape { dim: 1 } input_shape { dim: 2 }", "once per input"),
])
def test_bad_input_fields(text, message):
    with pytest.raises(ConfigError, match=message):
        upgrade.upgrade_net_input(net(text))


# --- BatchNorm ------------------------------------------------------------------------------------------
def test_batch_norm_with_three_param_specs_gets_zero_multipliers():
    param = net("""
layer { name: 'bn' type: 'BatchNorm' bottom: 'x' top: 'x'
        param { lr_mult: 1 name: 'mean' } param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 5 } }
layer { name: 'bn2' type: 'BatchNorm' bottom: 'x' top: 'x' param { lr_mult: 0 } }""")
    assert upgrade.net_needs_batch_norm_upgrade(param)
    upgrade.upgrade_net_batch_norm(param)
    assert_same(param, """
layer { name: 'bn' type: 'BatchNorm' bottom: 'x' top: 'x'
        param { name: 'mean' lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }
        param { lr_mult: 0 decay_mult: 0 } }
layer { name: 'bn2' type: 'BatchNorm' bottom: 'x' top: 'x' param { lr_mult: 0 } }""")
    assert not upgrade.net_needs_batch_norm_upgrade(net("layer { type: 'BatchNorm' param { } }"))


# --- solvers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("enum, name", [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
                                        ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_enum_becomes_type(enum, name, capsys):
    param = solver_from_string(f"solver_type: {enum} base_lr: 0.1")
    assert upgrade.upgrade_solver_as_needed(param, "s.prototxt") == ["solver_type"]
    assert param.type == name and not param.HasField("solver_type")
    assert f"upgraded the deprecated 'solver_type: {enum}'" in capsys.readouterr().err
    assert upgrade.upgrade_solver_as_needed(param) == []


def test_solver_type_and_type_together_is_an_error():
    with pytest.raises(ConfigError, match="not both"):
        upgrade.upgrade_solver_param(solver_from_string('solver_type: ADAM type: "Adam"'))


def test_solvers_still_import_upgrade_solver_param():
    from dltrain.solvers import upgrade_solver_param
    from dltrain.solvers.solver import upgrade_solver_param as again
    assert upgrade_solver_param is upgrade.upgrade_solver_param is again


# --- binary .caffemodel files --------------------------------------------------------------------------
def v1_weights(path, weights, bias, v0=False):
    """A V1 (or V0) .caffemodel holding an InnerProduct 'fc' with legacy 4-D BlobProtos."""
    model = caffe_pb2.NetParameter(name="old")
    model.input.append("data")                       # old caffemodels name their input, without a shape
    layer = model.layers.add()
    target = layer.layer if v0 else layer
    target.name = "fc"
    if v0:
        target.type = "innerproduct"
        target.num_output = weights.shape[0]
    else:
        layer.type = caffe_pb2.V1LayerParameter.INNER_PRODUCT
        layer.inner_product_param.num_output = weights.shape[0]
    layer.bottom.append("data")
    layer.top.append("fc")
    for array in (weights, bias):
        blob = target.blobs.add()
        blob.num, blob.channels = 1, 1
        blob.height, blob.width = (1, array.shape[0]) if array.ndim == 1 else array.shape
        blob.data.extend(array.ravel().tolist())
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


DEPLOY = "input: 'data' input_shape { dim: 2 dim: 3 } " \
         "layer { name: 'fc' type: 'InnerProduct' bottom: 'data' top: 'fc' inner_product_param { num_output: 4 } }"


@pytest.mark.parametrize("v0", [False, True], ids=["V1", "V0"])
def test_copy_from_an_old_binary_caffemodel(tmp_path, v0, capsys):
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    path = v1_weights(str(tmp_path / "old.caffemodel"), w, b, v0=v0)
    n = Net(net(DEPLOY), TEST, weights=path)
    np.testing.assert_array_equal(n.params["fc"][0].data, w)
    np.testing.assert_array_equal(n.params["fc"][1].data, b)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(n.forward(data=x)["fc"], x @ w.T + b, rtol=1e-5)
    assert f"{path}: upgraded deprecated" in capsys.readouterr().err


def test_an_old_binary_caffemodel_builds_a_net_itself(tmp_path):
    w, b = np.arange(12, dtype=np.float32).reshape(4, 3), np.ones(4, np.float32)
    path = v1_weights(str(tmp_path / "old.caffemodel"), w, b)
    model = load_net(path)
    upgrade.upgrade_net_as_needed(model, notice=False)
    assert [l.type for l in model.layer] == ["InnerProduct"] and not model.input
    assert list(model.layer[0].blobs[0].data) == list(w.ravel())


# --- dltrain upgrade -----------------------------------------------------------------------------------
def test_cli_upgrades_net_text(tmp_path, capsys):
    src, dst = tmp_path / "old.prototxt", tmp_path / "new.prototxt"
    src.write_text(V1_NET)
    assert dltrain(["upgrade", str(src), str(dst)]) == 0
    assert_same(load_net(str(dst)), V2_NET)
    err = capsys.readouterr().err
    assert "Upgraded" in err and "V1LayerParameter layers" in err and f"to {dst}" in err


def test_cli_upgrades_net_binary(tmp_path):
    w, b = np.ones((4, 3), np.float32), np.zeros(4, np.float32)
    src = v1_weights(str(tmp_path / "old.caffemodel"), w, b)
    dst = tmp_path / "new.caffemodel"
    assert dltrain(["upgrade_net_proto_binary", src, str(dst)]) == 0
    with open(dst, "rb") as f:
        model = caffe_pb2.NetParameter.FromString(f.read())
    assert not model.layers and model.layer[0].type == "InnerProduct" and len(model.layer[0].blobs) == 2
    assert list(model.layer[0].blobs[0].data) == [1.0] * 12


def test_cli_upgrades_solver_text(tmp_path):
    src, dst = tmp_path / "solver.prototxt", tmp_path / "new_solver.prototxt"
    src.write_text('net: "net.prototxt"\nsolver_type: NESTEROV\nbase_lr: 0.01\n'
                   "test_net_param { layers { name: 'r' type: RELU } }\n")
    assert dltrain(["upgrade", str(src), str(dst)]) == 0
    from dlcore.config import load_solver
    solver = load_solver(str(dst))
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    assert solver.net == "net.prototxt"
    assert solver.test_net_param[0].layer[0].type == "ReLU"          # inline nets upgraded too


def test_cli_current_file_is_written_unchanged(tmp_path, capsys):
    src, dst = tmp_path / "net.prototxt", tmp_path / "same.yaml"
    src.write_text(V2_NET)
    assert dltrain(["upgrade", str(src), str(dst)]) == 0
    assert "already in latest proto format" in capsys.readouterr().err
    assert_same(load_net(str(dst)), V2_NET)          # written as YAML, by OUT's extension


def test_cli_not_fully_compatible_exits_1(tmp_path, capsys):
    src, dst = tmp_path / "old.prototxt", tmp_path / "new.prototxt"
    src.write_text("layers { layer { name: 'r' type: 'relu' num_output: 3 } }")
    assert dltrain(["upgrade", str(src), str(dst)]) == 1
    assert "unknown parameter num_output for layer type relu" in capsys.readouterr().err
    assert load_net(str(dst)).layer[0].type == "ReLU"


def test_cli_rejects_what_is_neither_net_nor_solver(tmp_path, capsys):
    src = tmp_path / "junk.prototxt"
    src.write_text("bogus_field: 1\n")
    assert dltrain(["upgrade", str(src), str(tmp_path / "out.prototxt")]) == 1
    assert "neither a net nor a solver" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out.prototxt")


# --- against BVLC Caffe's own upgrade tools, when they are at hand -------------------------------------------
CAFFE_TOOLS = os.path.dirname(os.environ.get("DLTRAIN_CAFFE", ""))   # the folder of a BVLC Caffe `caffe` build


@pytest.mark.skipif(not os.path.isfile(os.path.join(CAFFE_TOOLS, "upgrade_net_proto_text")),
                    reason="set DLTRAIN_CAFFE to a BVLC Caffe `caffe` binary with the upgrade tools beside it")
@pytest.mark.parametrize("text", [V0_PADDED, V1_NET, "input: 'a' input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4"
                                  " layers { name: 'r' type: RELU bottom: 'a' top: 'a' }"], ids=["V0", "V1", "input"])
def test_upgrade_matches_caffes_upgrade_net_proto_text(tmp_path, text):
    import subprocess
    src, theirs, ours = (tmp_path / n for n in ("old.prototxt", "caffe.prototxt", "ours.prototxt"))
    src.write_text(text)
    subprocess.run([os.path.join(CAFFE_TOOLS, "upgrade_net_proto_text"), str(src), str(theirs)], check=True,
                   capture_output=True)
    dltrain(["upgrade", str(src), str(ours)])
    assert load_net(str(ours)) == load_net(str(theirs))


@pytest.mark.skipif(not os.path.isfile(os.path.join(CAFFE_TOOLS, "upgrade_net_proto_binary")),
                    reason="set DLTRAIN_CAFFE to a BVLC Caffe `caffe` binary with the upgrade tools beside it")
@pytest.mark.parametrize("v0", [False, True], ids=["V1", "V0"])
def test_binary_upgrade_is_byte_identical_to_caffes(tmp_path, v0):
    import subprocess
    src = v1_weights(str(tmp_path / "old.caffemodel"), np.arange(12, dtype=np.float32).reshape(4, 3),
                     np.ones(4, np.float32), v0=v0)
    theirs, ours = tmp_path / "caffe.caffemodel", tmp_path / "ours.caffemodel"
    subprocess.run([os.path.join(CAFFE_TOOLS, "upgrade_net_proto_binary"), src, str(theirs)], check=True,
                   capture_output=True)
    dltrain(["upgrade", src, str(ours)])
    assert ours.read_bytes() == theirs.read_bytes()
