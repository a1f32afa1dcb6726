"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3-Small (Howard et al. 2019) without torchvision.

The layer shapes and parameter counts equal torchvision's definitions (3,504,872 and 2,542,856
parameters at 1000 classes, width 1.0, 3 input channels). Every inverted-residual block names its
convs ``expand`` (PW-conv1, absent when the expansion ratio is 1), ``depthwise`` (groups ==
in_channels == out_channels) and ``project`` (PW-conv2), the layers DEPrune prunes.

    net = MobileNetV2(input_shape=(3, 32, 32), num_classes=10, width_mult=0.25)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
from torch import nn

from sparse_lightning.errors import ConfigError


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor``, never more than 10% below ``value`` (TF/torchvision)."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                act: type[nn.Module] | None = nn.ReLU6, eps: float = 1e-5) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ activation), 'same'-style padding (k - 1) // 2."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout, eps=eps)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """x * gate(fc2(act(fc1(avgpool(x))))): squeeze-and-excitation (Hu et al. 2018)."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module] = nn.ReLU,
                 gate: type[nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class InvertedResidual(nn.Module):
    """PW-conv1 (expand) -> DW-conv -> [SE] -> PW-conv2 (project, linear), residual when shapes allow."""

    def __init__(self, cin: int, expanded: int, cout: int, kernel: int, stride: int,
                 act: type[nn.Module] = nn.ReLU6, se_squeeze: int = 0,
                 se_act: type[nn.Module] = nn.ReLU, se_gate: type[nn.Module] = nn.Hardsigmoid,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.expand = conv_bn_act(cin, expanded, 1, act=act, eps=eps) if expanded != cin else None
        self.depthwise = conv_bn_act(expanded, expanded, kernel, stride, groups=expanded, act=act, eps=eps)
        self.se = SqueezeExcite(expanded, se_squeeze, se_act, se_gate) if se_squeeze else None
        self.project = conv_bn_act(expanded, cout, 1, act=None, eps=eps)
        self.residual = stride == 1 and cin == cout

    def body(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x  # (B, E, H, W)
        h = self.depthwise(h)  # (B, E, H/s, W/s)
        if self.se is not None:
            h = self.se(h)
        return self.project(h)  # (B, C_out, H/s, W/s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return x + h if self.residual else h


def image_channels(name: str, input_shape: Sequence[int]) -> int:
    if len(input_shape) != 3:
        raise ConfigError(f"{name} expects images with input_shape (C, H, W), got {tuple(input_shape)}")
    return int(input_shape[0])


def check_width(name: str, width_mult: float) -> None:
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ConfigError(f"{name} width_mult must be a number > 0, got {width_mult!r}")


def torchvision_net(name: str, builder: str, in_channels: int, num_classes: int, small_input: bool,
                    **kwargs) -> nn.Module:
    """torchvision's definition (random init), stem adapted to ``in_channels`` and small images."""
    if importlib.util.find_spec("torchvision") is None:
        raise ConfigError(f"{name}(use_torchvision=True) needs torchvision: pip install torchvision, or set use_torchvision=false")
    import torchvision

    net = getattr(torchvision.models, builder)(weights=None, num_classes=num_classes, **kwargs)
    stem: nn.Conv2d = net.features[0][0]
    if in_channels != stem.in_channels or small_input:
        net.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size,
                                       1 if small_input else stem.stride, stem.padding, bias=False)
    return net


# t (expansion), c (channels), n (blocks), s (stride of the first block): Sandler et al. Table 2.
V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class ImageClassifierNet(nn.Module):
    """``features`` (B, C, H, W) -> global average pool -> ``classifier``; or torchvision's ``net`` when built with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "net"):
            return self.net(x)
        return self.classifier(self.features(x).mean((2, 3)))  # (B, num_classes)


class MobileNetV2(ImageClassifierNet):
    """MobileNetV2: Sandler et al., "Inverted Residuals and Linear Bottlenecks", CVPR 2018.

    Args:
        input_shape: ``(C, H, W)``; any H, W >= 1 runs (8x8 digits end at 1x1 before pooling).
        num_classes: number of output logits.
        width_mult: channel multiplier (channels rounded to multiples of 8, as torchvision).
        small_input: stride-1 stem for 32x32 (CIFAR) or smaller images; False: ImageNet stride 2.
        dropout: dropout before the classifier (0.2 in torchvision).
        use_torchvision: build ``torchvision.models.mobilenet_v2`` instead (needs torchvision).
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, width_mult: float = 1.0,
                 small_input: bool = True, dropout: float = 0.2, use_torchvision: bool = False) -> None:
        super().__init__()
        cin = image_channels("MobileNetV2", input_shape)
        check_width("MobileNetV2", width_mult)
        if use_torchvision:
            self.net = torchvision_net("MobileNetV2", "mobilenet_v2", cin, num_classes, small_input,
                                       width_mult=width_mult, dropout=dropout)
            return
        channels = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [conv_bn_act(cin, channels, 3, 1 if small_input else 2)]
        for t, c, n, s in V2_SETTINGS:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, int(round(channels * t)), cout, 3, s if i == 0 else 1))
                channels = cout
        layers.append(conv_bn_act(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        _init(self)



# kernel, expanded, out, SE, activation ("RE" ReLU / "HS" hardswish), stride: Howard et al. Table 2.
V3_SMALL_SETTINGS = (
    (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1),
)


class MobileNetV3Small(ImageClassifierNet):
    """MobileNetV3-Small: Howard et al., "Searching for MobileNetV3", ICCV 2019 (torchvision's layout).

    Hardswish activations in the later blocks and the head, squeeze-and-excitation with a hard
    sigmoid gate (squeeze = expanded / 4, rounded to 8), a 1024-wide head.

    Args:
        input_shape: ``(C, H, W)``; any H, W >= 1 runs.
        num_classes: number of output logits.
        width_mult: channel multiplier.
        small_input: stride-1 stem for 32x32 or smaller images; False: ImageNet stride 2.
        dropout: dropout in the head (0.2 in torchvision).
        use_torchvision: build ``torchvision.models.mobilenet_v3_small`` instead.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, width_mult: float = 1.0,
                 small_input: bool = True, dropout: float = 0.2, use_torchvision: bool = False) -> None:
        super().__init__()
        cin = image_channels("MobileNetV3Small", input_shape)
        check_width("MobileNetV3Small", width_mult)
        if use_torchvision:
            self.net = torchvision_net("MobileNetV3Small", "mobilenet_v3_small", cin, num_classes, small_input,
                                       width_mult=width_mult, dropout=dropout)
            return
        channels = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [conv_bn_act(cin, channels, 3, 1 if small_input else 2, act=nn.Hardswish, eps=1e-3)]
        for k, e, c, se, a, s in V3_SMALL_SETTINGS:
            expanded, cout = make_divisible(e * width_mult), make_divisible(c * width_mult)
            layers.append(InvertedResidual(channels, expanded, cout, k, s, nn.Hardswish if a == "HS" else nn.ReLU,
                                           make_divisible(expanded // 4) if se else 0, eps=1e-3))
            channels = cout
        head = 6 * channels
        layers.append(conv_bn_act(channels, head, 1, act=nn.Hardswish, eps=1e-3))
        self.features = nn.Sequential(*layers)
        last = make_divisible(1024 * width_mult)
        self.classifier = nn.Sequential(nn.Linear(head, last), nn.Hardswish(inplace=True), nn.Dropout(dropout),
                                        nn.Linear(last, num_classes))
        _init(self)



def _init(net: nn.Module) -> None:
    """torchvision's initialisation: Kaiming (fan_out) convs, unit BN, N(0, 0.01) linear."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
