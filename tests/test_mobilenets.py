"""MobileNetV2, MobileNetV3-Small and EfficientNet-B0 built without torchvision."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from sparse_lightning.deprune import find_depthwise_separable, is_depthwise
from sparse_lightning.errors import ConfigError
from sparse_lightning.models.efficientnet import EfficientNetB0
from sparse_lightning.models.mobilenet import MobileNetV2, MobileNetV3Small

NETS = [MobileNetV2, MobileNetV3Small, EfficientNetB0]
# torchvision's parameter counts (weights=None, num_classes=1000, width 1.0).
TORCHVISION_PARAMS = {MobileNetV2: 3_504_872, MobileNetV3Small: 2_542_856, EfficientNetB0: 5_288_548}
# Depthwise convs per net: one per inverted-residual block.
BLOCKS = {MobileNetV2: 17, MobileNetV3Small: 11, EfficientNetB0: 16}


@pytest.mark.parametrize("cls", NETS)
def test_parameter_count_equals_torchvision(cls):
    net = cls((3, 224, 224), 1000, small_input=False)
    assert sum(p.numel() for p in net.parameters()) == TORCHVISION_PARAMS[cls]


@pytest.mark.parametrize("cls", NETS)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)])
def test_logits_shape_for_small_images(cls, shape):
    net = cls(shape, 10, width_mult=0.25).eval()
    assert net(torch.randn(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("cls", NETS)
def test_small_input_stem_has_stride_one(cls):
    stems = {s: next(m for m in cls((3, 32, 32), 10, width_mult=0.25, small_input=s).modules()
                     if isinstance(m, nn.Conv2d)).stride for s in (True, False)}
    assert stems == {True: (1, 1), False: (2, 2)}


@pytest.mark.parametrize("cls", NETS)
def test_depthwise_layers_and_their_projection_are_identifiable(cls):
    net = cls((3, 32, 32), 10, width_mult=0.5)
    dws = [m for m in net.modules() if is_depthwise(m)]
    assert len(dws) == BLOCKS[cls]
    assert all(m.groups == m.in_channels == m.out_channels for m in dws)
    pairs = find_depthwise_separable(net)
    assert [name.endswith("depthwise.0") for name, _ in pairs] == [True] * BLOCKS[cls]
    assert all(pw2 == name.replace("depthwise", "project") for name, pw2 in pairs)


def test_width_multiplier_shrinks_channels_to_multiples_of_8():
    small = MobileNetV2((3, 32, 32), 10, width_mult=0.5)
    widths = [m.out_channels for m in small.modules() if is_depthwise(m)]
    assert all(w % 8 == 0 for w in widths)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in MobileNetV2((3, 32, 32), 10).parameters())


@pytest.mark.parametrize("cls", NETS)
def test_bad_input_rank_and_width_raise_config_error(cls):
    with pytest.raises(ConfigError, match="input_shape"):
        cls((1, 40), 10)
    with pytest.raises(ConfigError, match="width_mult"):
        cls((3, 32, 32), 10, width_mult=0)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_use_torchvision_without_torchvision_is_a_config_error():
    with pytest.raises(ConfigError, match="torchvision"):
        MobileNetV2((3, 32, 32), 10, use_torchvision=True)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")
@pytest.mark.parametrize("cls", NETS)
def test_use_torchvision_builds_the_same_sizes(cls):
    ours, theirs = cls((3, 32, 32), 10), cls((3, 32, 32), 10, use_torchvision=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert len(find_depthwise_separable(theirs)) == BLOCKS[cls]


def test_efficientnet_stochastic_depth_only_in_training():
    net = EfficientNetB0((3, 16, 16), 10, width_mult=0.25, stochastic_depth=0.5).eval()
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(net(x), net(x))
