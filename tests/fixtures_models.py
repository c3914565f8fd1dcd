"""A user model factory, as `package.module:factory`, for tests."""

from torch import nn


def tiny_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def tiny_layernorm_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """`tiny_cnn` with GroupNorm(1, ...) (LayerNorm over channels and pixels): no BatchNorm."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.GroupNorm(1, 8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(1, 16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
