"""Model zoo: CIFAR-style ResNets, VGG with batch norm, MobileNetV2, torchvision and user models.

`build_model(name, num_classes=, in_channels=)` is the one entry point. Names:
`resnet20|32|56`, `vgg11|16` (CIFAR layout, BN), `mobilenetv2` (CIFAR variant),
`torchvision:NAME` (any torchvision classification model, untrained weights), `timm:NAME`
(any timm model, untrained; needs the `timm` extra) and `package.module:factory` (called with
`num_classes=` and `in_channels=`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunetune.errors import ModelNotFoundError

__all__ = ["build_model", "zoo_names", "ModelNotFoundError", "ResNetCifar", "VGGCifar",
           "MobileNetV2Cifar"]


# ---------------------------------------------------------------------------------------------
# ResNet for CIFAR (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels, 6n+2 layers.


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Projection shortcut (option B) where the shape changes: unlike option A's zero padding
        # it is an ordinary layer, so dependency-graph pruning can follow it.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ModelNotFoundError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), "
                                     f"got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


# ---------------------------------------------------------------------------------------------
# VGG with batch norm, CIFAR layout (one small classifier instead of the 4096-wide ImageNet one).

_VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


class VGGCifar(nn.Module):
    def __init__(self, variant: str, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in _VGG_CFG[variant]:
            if v == "M":
                # ceil_mode keeps 28x28 (and 8x8) inputs alive through five poolings.
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# ---------------------------------------------------------------------------------------------
# MobileNetV2, CIFAR variant: stride 1 in the stem and the second stage (Sandler et al. 2018).


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Cifar(nn.Module):
    # (expansion, out channels, repeats, first stride)
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c = int(32 * width)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(c), nn.ReLU6(inplace=True)]
        for t, out, n, s in self.SETTINGS:
            out = int(out * width)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        last = int(1280 * max(1.0, width))
        layers += [nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# ---------------------------------------------------------------------------------------------
# Registry


def _torchvision_model(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except ValueError as err:
        available = ", ".join(torchvision.models.list_models(module=torchvision.models))
        raise ModelNotFoundError(f"unknown torchvision model {name!r}; classification models "
                                 f"are: {available}") from err
    if in_channels != 3:
        _adapt_first_conv(model, in_channels)
    return model


def _timm_model(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """A timm model, untrained (no weights are downloaded); needs the `timm` extra."""
    try:
        import timm
    except ImportError as err:
        raise ModelNotFoundError(f"model 'timm:{name}' needs timm: pip install "
                                 "'prunetune[timm]'") from err
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes,
                                 in_chans=in_channels, **kwargs)
    except RuntimeError as err:  # timm's "Unknown model"
        close = timm.list_models(f"*{name.split('_')[0]}*")[:10]
        raise ModelNotFoundError(f"unknown timm model {name!r} ({err}); similar names: "
                                 f"{', '.join(close) or 'none'} (timm.list_models())") from err


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first convolution so the model takes `in_channels` input channels."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride,
                    child.padding, child.dilation, child.groups, child.bias is not None))
                return
    raise ModelNotFoundError("cannot adapt input channels: the model has no Conv2d")


_ZOO: dict[str, Callable[..., nn.Module]] = {
    "resnet20": lambda **kw: ResNetCifar(20, **kw),
    "resnet32": lambda **kw: ResNetCifar(32, **kw),
    "resnet56": lambda **kw: ResNetCifar(56, **kw),
    "vgg11": lambda **kw: VGGCifar("vgg11", **kw),
    "vgg16": lambda **kw: VGGCifar("vgg16", **kw),
    "mobilenetv2": lambda **kw: MobileNetV2Cifar(**kw),
}


def zoo_names() -> list[str]:
    """The built-in model names (torchvision and user factories are not listed)."""
    return sorted(_ZOO)


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 3,
                **kwargs: Any) -> nn.Module:
    """Build an untrained model by name; see the module docstring for the accepted names."""
    if name in _ZOO:
        return _ZOO[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    if name.startswith("torchvision:"):
        return _torchvision_model(name.split(":", 1)[1], num_classes, in_channels, **kwargs)
    if name.startswith("timm:"):
        return _timm_model(name.split(":", 1)[1], num_classes, in_channels, **kwargs)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ModelNotFoundError(f"model {name!r}: cannot import factory {attr!r} from "
                                     f"module {module_name!r} ({err})") from err
        model = factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
        if not isinstance(model, nn.Module):
            raise ModelNotFoundError(f"model factory {name!r} returned {type(model).__name__}, "
                                     "not a torch.nn.Module")
        return model
    raise ModelNotFoundError(f"unknown model {name!r}; use one of {', '.join(zoo_names())}, "
                             "'torchvision:NAME', 'timm:NAME' or 'package.module:factory'")
