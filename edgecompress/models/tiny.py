"""A small built-in CNN family for the demo, the tests and users without a model of their own.

Both families are built only from plain ``torch.nn`` layers (Conv2d, BatchNorm2d, ReLU/ReLU6,
Linear, AdaptiveAvgPool2d) so that torch-pruning can trace their dependency graph and
``torch.onnx.export(..., dynamo=True)`` lowers them without custom ops. The top-level children
are always ``stem``, ``stage1``, ``stage2``, ``stage3``, ``pool`` and ``classifier`` so a recipe
can name layers (for example ``stage3``) for feature distillation regardless of the family.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from edgecompress.errors import ConfigError

logger = logging.getLogger(__name__)

FAMILIES = ("resnet", "mobilenet")

# Base channels of stage1..stage3 before ``width`` scaling; the stem uses the stage1 width.
_BASE_CHANNELS = (32, 64, 128)
# Stride of the first block of stage1..stage3; the stem keeps full resolution so 8x8 inputs work.
_STAGE_STRIDES = (1, 2, 2)
# MobileNetV2 expansion ratio of the inverted residual blocks.
_EXPAND_RATIO = 4


def scaled_channels(base: int, width: float) -> int:
    """Scale ``base`` by ``width`` and round to a multiple of 8 (minimum 8).

    Multiples of 8 keep the channel counts friendly to INT8 kernels and to pruning rounding.
    """
    return max(8, int(round(base * width / 8.0)) * 8)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Return ``[Conv2d, BatchNorm2d]`` with "same" padding and no conv bias (BN has one)."""
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(cout),
    ]


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus shortcut, ReLU after the add.

    The shortcut is the identity when shape is preserved, otherwise a strided 1x1 conv + BN.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, 3, stride)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2, self.bn2 = _conv_bn(cout, cout, 3)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(*_conv_bn(cin, cout, 1, stride))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1 -> depthwise 3x3 -> project 1x1 (linear bottleneck).

    The residual add is used only when stride is 1 and input/output channels match.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = _EXPAND_RATIO) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.expand = nn.Sequential(*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=False))
        self.depthwise = nn.Sequential(*_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                       nn.ReLU6(inplace=False))
        self.project = nn.Sequential(*_conv_bn(hidden, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class TinyNet(nn.Module):
    """Stem, three stages, global average pool and a linear ``classifier``.

    Attributes:
        family: ``"resnet"`` or ``"mobilenet"``, kept so reports can describe the model.
    """

    def __init__(self, family: str, stem: nn.Module, stages: list[nn.Module], features: int,
                 num_classes: int) -> None:
        super().__init__()
        self.family = family
        self.stem = stem
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BN, small-normal classifier: trains quickly from scratch."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _check_args(family: str, num_classes: int, in_channels: int, width: float,
                depth: int) -> None:
    """Reject bad hyper-parameters early with a message naming the one at fault."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown built-in model family {family!r}; known families: "
                          f"{', '.join(FAMILIES)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
    if not width > 0:
        raise ConfigError(f"width must be > 0, got {width!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"depth must be an integer >= 1, got {depth!r}")


def build_builtin(family: str, *, num_classes: int, in_channels: int, width: float = 1.0,
                  depth: int = 1) -> nn.Module:
    """Build a built-in ``resnet`` or ``mobilenet`` classifier.

    Args:
        family: One of :data:`FAMILIES`.
        num_classes: Output size of ``classifier``.
        in_channels: Channels of the input images (1 for grey digits, 3 for RGB).
        width: Channel multiplier applied to the base channels 32/64/128.
        depth: Blocks per stage.

    Returns:
        A freshly initialised :class:`TinyNet` in training mode.

    Raises:
        ConfigError: If the family is unknown or a size is invalid.
    """
    _check_args(family, num_classes, in_channels, width, depth)
    channels = [scaled_channels(c, width) for c in _BASE_CHANNELS]
    act: type[nn.Module] = nn.ReLU if family == "resnet" else nn.ReLU6
    stem = nn.Sequential(*_conv_bn(in_channels, channels[0], 3), act())
    stages: list[nn.Module] = []
    cin = channels[0]
    for cout, stride in zip(channels, _STAGE_STRIDES, strict=True):
        blocks: list[nn.Module] = []
        for i in range(depth):
            block_stride = stride if i == 0 else 1
            if family == "resnet":
                blocks.append(BasicBlock(cin, cout, block_stride))
            else:
                blocks.append(InvertedResidual(cin, cout, block_stride))
            cin = cout
        stages.append(nn.Sequential(*blocks))
    model = TinyNet(family, stem, stages, channels[-1], num_classes)
    _init_weights(model)
    logger.debug("built %s width=%s depth=%s channels=%s", family, width, depth, channels)
    return model
