"""CIFAR ResNets (He et al. 2016, section 4.2), registered in timm's model registry.

Registration waits until timm is imported (`register_in_timm`), because importing timm (and the
torchvision it pulls in) costs more than importing torch: `agfprune info` on a CIFAR ResNet needs
neither, and `create_model` builds these nets directly.

State-dict keys match the public akamaster/pytorch_resnet_cifar10 checkpoints
(conv1, bn1, layer{1,2,3}.N.{conv1,bn1,conv2,bn2}, linear). The option-A shortcut
(stride-2 subsample + zero channel padding) is expressed as a frozen 1x1 stride-2 convolution
whose weight is a shifted identity: exactly the same function, but a layer that torch-pruning's
dependency graph can follow and slice, so that residual channels prune consistently.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

CIFAR_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 32, 32),
    "interpolation": "bilinear",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 1.0,
    "crop_mode": "center",
    "num_classes": 10,
}


class OptionAShortcut(nn.Conv2d):
    """x[:, :, ::2, ::2] zero-padded by `pad` channels on each side, as a frozen 1x1 convolution.

    Checkpoints of the original architecture carry no weight for it; loading such a state dict
    fills in the exact shifted identity, so both old and pruned checkpoints load.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 2) -> None:
        super().__init__(in_planes, planes, kernel_size=1, stride=stride, bias=False)
        self.weight.requires_grad_(False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.copy_(self.shifted_identity(self.in_channels, self.out_channels))

    @staticmethod
    def shifted_identity(in_planes: int, planes: int) -> torch.Tensor:
        pad = (planes - in_planes) // 2
        weight = torch.zeros(planes, in_planes, 1, 1)
        for channel in range(in_planes):
            weight[pad + channel, channel, 0, 0] = 1.0
        return weight

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # noqa: D401 - torch hook signature
        key = prefix + "weight"
        if key not in state_dict:
            state_dict[key] = self.shifted_identity(self.in_channels, self.out_channels)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def option_a_reference(x: torch.Tensor, planes: int) -> torch.Tensor:
    """The original LambdaLayer shortcut, kept to test the convolution against."""
    pad = planes // 4
    return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0.0)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = OptionAShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 16/32/64 channels, global pool, linear head."""

    def __init__(self, num_blocks: tuple[int, int, int], num_classes: int = 10, in_chans: int = 3,
                 **_: Any) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = 64
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.linear: nn.Module = nn.Linear(64, num_classes)
        # timm's feature-extraction description; widths are rewritten after pruning
        self.feature_info = [dict(num_chs=16, reduction=1, module="layer1"),
                             dict(num_chs=32, reduction=2, module="layer2"),
                             dict(num_chs=64, reduction=4, module="layer3")]
        self.init_weights()

    def init_weights(self) -> None:
        """He-normal convolutions and linear layers (the reference CIFAR ResNet's init); torch's
        defaults elsewhere. Works on pruned widths too, which `compare --baselines scratch` uses."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and not isinstance(module, OptionAShortcut):
                nn.init.kaiming_normal_(module.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new linear head for `num_classes` (0: none, forward returns pooled features), as timm's."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"CIFAR ResNets pool by average only, not {global_pool!r}")
        parameter = self.linear.weight if isinstance(self.linear, nn.Linear) else next(self.parameters())
        self.num_classes = num_classes
        self.linear = (nn.Linear(self.num_features, num_classes, device=parameter.device, dtype=parameter.dtype)
                       if num_classes > 0 else nn.Identity())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(out)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create(depth: int, pretrained: bool, **kwargs: Any) -> CifarResNet:
    if pretrained:
        raise ValueError(
            f"cifar_resnet{depth} has no hub weights; pass --checkpoint (e.g. ../shared/models/*.th)"
        )
    blocks = (depth - 2) // 6
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.pop("cache_dir", None)
    model = CifarResNet((blocks, blocks, blocks), **kwargs)
    config = dict(CIFAR_DATA_CONFIG, num_classes=model.num_classes)
    model.pretrained_cfg = config
    model.default_cfg = config
    return model


def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create(20, pretrained, **kwargs)


def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create(32, pretrained, **kwargs)


def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create(44, pretrained, **kwargs)


def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create(56, pretrained, **kwargs)


MODELS = {fn.__name__: fn for fn in (cifar_resnet20, cifar_resnet32, cifar_resnet44, cifar_resnet56)}


def register_in_timm() -> None:
    """Add the CIFAR ResNets to timm's registry (idempotent; imports timm)."""
    import timm
    from timm.models import register_model

    for name, entrypoint in MODELS.items():
        if not timm.is_model(name):
            register_model(entrypoint)
