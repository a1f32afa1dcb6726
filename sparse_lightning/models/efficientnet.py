"""EfficientNet-B0 (Tan & Le 2019) without torchvision: MBConv blocks with SiLU, squeeze-and-excitation
and stochastic depth; 5,288,548 parameters at 1000 classes (equal to torchvision's definition).

Blocks reuse :class:`~sparse_lightning.models.mobilenet.InvertedResidual`, so their convs are named
``expand`` / ``depthwise`` / ``project`` like the MobileNets (DEPrune's DW-conv and PW-conv2).

    net = EfficientNetB0(input_shape=(3, 32, 32), num_classes=10)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparse_lightning.errors import ConfigError
from sparse_lightning.models.mobilenet import (
    ImageClassifierNet,
    InvertedResidual,
    _init,
    check_width,
    conv_bn_act,
    image_channels,
    make_divisible,
    torchvision_net,
)

# expand ratio, kernel, stride, in, out, layers: Tan & Le Table 1 (B0).
B0_SETTINGS = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
               (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))


class MBConv(InvertedResidual):
    """Inverted residual with SiLU, sigmoid-gated SE (squeeze = block input / 4) and stochastic depth."""

    def __init__(self, cin: int, expand_ratio: int, cout: int, kernel: int, stride: int, drop_prob: float) -> None:
        super().__init__(cin, make_divisible(cin * expand_ratio), cout, kernel, stride, act=nn.SiLU,
                         se_squeeze=max(1, cin // 4), se_act=nn.SiLU, se_gate=nn.Sigmoid, eps=1e-3)
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if not self.residual:
            return h
        if self.training and self.drop_prob > 0:  # stochastic depth, per sample ("row" mode)
            keep = 1.0 - self.drop_prob
            h = h * torch.empty(h.shape[0], 1, 1, 1, device=h.device, dtype=h.dtype).bernoulli_(keep) / keep
        return x + h


class EfficientNetB0(ImageClassifierNet):
    """EfficientNet-B0: Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019.

    Args:
        input_shape: ``(C, H, W)``; any H, W >= 1 runs.
        num_classes: number of output logits.
        width_mult: channel multiplier (1.0 is B0; depth is not scaled).
        small_input: stride-1 stem for 32x32 or smaller images; False: ImageNet stride 2.
        dropout: dropout before the classifier (0.2 for B0).
        stochastic_depth: drop probability of the last block, linear from 0 (0.2 in torchvision).
        use_torchvision: build ``torchvision.models.efficientnet_b0`` instead (width 1.0 only).
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, width_mult: float = 1.0,
                 small_input: bool = True, dropout: float = 0.2, stochastic_depth: float = 0.2,
                 use_torchvision: bool = False) -> None:
        super().__init__()
        cin = image_channels("EfficientNetB0", input_shape)
        check_width("EfficientNetB0", width_mult)
        if not 0.0 <= stochastic_depth < 1.0:
            raise ConfigError(f"EfficientNetB0 stochastic_depth must be in [0, 1), got {stochastic_depth!r}")
        if use_torchvision:
            if width_mult != 1.0:
                raise ConfigError("EfficientNetB0(use_torchvision=True) supports width_mult=1.0 only")
            self.net = torchvision_net("EfficientNetB0", "efficientnet_b0", cin, num_classes, small_input,
                                       dropout=dropout, stochastic_depth_prob=stochastic_depth)
            return
        total = sum(n for *_, n in B0_SETTINGS)
        stem = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [conv_bn_act(cin, stem, 3, 1 if small_input else 2, act=nn.SiLU, eps=1e-3)]
        index, channels = 0, stem
        for t, k, s, _, c, n in B0_SETTINGS:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(MBConv(channels, t, cout, k, s if i == 0 else 1, stochastic_depth * index / total))
                channels, index = cout, index + 1
        head = 4 * channels
        layers.append(conv_bn_act(channels, head, 1, act=nn.SiLU, eps=1e-3))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(head, num_classes))
        _init(self)
