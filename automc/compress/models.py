"""Models to compress: CIFAR ResNets (He et al. 2016, option-A shortcuts), CIFAR VGG with batch norm, any
torchvision classifier, and loading of pretrained state dicts.

The module names of ``CifarResNet`` follow the widely used CIFAR ResNet code (``conv1``, ``bn1``,
``layer1.0.conv1`` …, ``linear``) so its published checkpoints load as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from automc.errors import ValidationError

RESNET_DEPTHS = (20, 32, 44, 56, 110, 164)
VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


class ShortcutA(nn.Module):
    """Parameter-free "option A" shortcut: subsample spatially by ``stride``, zero-pad the channels.

    Pads ``(out_channels - in_channels) // 2`` channels in front and the rest behind (``planes // 4`` on each
    side for the usual doubling), exactly as the pretrained CIFAR ResNets were trained.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.pad_front = (out_channels - in_channels) // 2
        self.pad_back = out_channels - in_channels - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = ShortcutA(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of ``depth`` layers (6n+2 with basic blocks, 9n+2 with bottlenecks), widths w/2w/4w."""

    def __init__(self, depth: int, num_classes: int = 10, width: int = 16, bottleneck: bool = False) -> None:
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if bottleneck else BasicBlock
        per = 9 if bottleneck else 6
        if depth < per + 2 or (depth - 2) % per:
            raise ValidationError(f"a CIFAR ResNet with {'bottleneck' if bottleneck else 'basic'} blocks "
                                  f"needs depth {per}n+2, got {depth}", field="model")
        n = (depth - 2) // per
        self.depth, self.width, self.bottleneck = depth, width, bottleneck
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        layers = []
        for i, stride in enumerate((1, 2, 2)):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class CifarVGG(nn.Module):
    """CIFAR VGG-11/13/16/19 with batch norm: conv-BN-ReLU stacks, max pooling, global pooling, one linear."""

    def __init__(self, depth: int, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValidationError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}",
                                  field="model")
        self.depth, self.width = depth, width
        layers: list[nn.Module] = []
        c = 3
        for v in VGG_CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = int(v) * width // 64
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(out)


class SmallCNN(nn.Module):
    """A small VGG-style CNN for small grayscale images (1 input channel, e.g. the built-in 8x8 digits):
    conv-BN-ReLU stages of widths w, w, (pool) 2w, 2w, (pool) 4w, global pooling, one linear layer. Every conv
    is prunable and factorisable, so all six methods compress it."""

    STAGES: tuple[int | str, ...] = (1, 1, "M", 2, 2, "M", 4)

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        self.width = width
        layers: list[nn.Module] = []
        c = in_channels
        for v in self.STAGES:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = int(v) * width
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def build_model(name: str, num_classes: int = 10, *, width: int | None = None) -> nn.Module:
    """A fresh model by name: ``resnet{8,14,20,...,164}``, ``vgg{11,13,16,19}``, ``smallcnn`` (1 input channel,
    for the built-in digits), or a torchvision name.

    ``width`` sets the first stage's channels (16 for ResNets and the small CNN, 64 for VGG); small widths and
    ``resnet8`` are for tests. ResNet-164 (and any depth 9n+2 that is not 6n+2) uses bottleneck blocks.
    Raises ``ValidationError`` for an unknown name.
    """
    key = name.lower().replace("-", "").replace("_", "")
    model: nn.Module
    if m := re.fullmatch(r"resnet(\d+)", key):
        depth = int(m.group(1))
        bottleneck = depth == 164 or ((depth - 2) % 6 != 0 and (depth - 2) % 9 == 0)
        model = CifarResNet(depth, num_classes, width or 16, bottleneck=bottleneck)
    elif m := re.fullmatch(r"vgg(\d+)(bn)?", key):
        model = CifarVGG(int(m.group(1)), num_classes, width or 64)
    elif key == "smallcnn":
        model = SmallCNN(num_classes, width or 16)
    else:
        model = _torchvision_model(name, num_classes)
    # How to rebuild this model; saving.describe() writes it next to the weights.
    model.automc_base = {"name": name, "num_classes": num_classes, "width": width}
    return model


def _torchvision_model(name: str, num_classes: int) -> nn.Module:
    try:
        import torchvision  # noqa: PLC0415
    except ImportError:
        raise ValidationError(
            f"unknown model {name!r}; built in: resnet20/32/44/56/110/164, vgg11/13/16/19 "
            "(other names need torchvision: pip install 'automc[vision]')", field="model") from None
    try:
        return torchvision.models.get_model(name, num_classes=num_classes)
    except (ValueError, KeyError):
        raise ValidationError(f"unknown model {name!r} (neither built in nor in torchvision)",
                              field="model") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (``weights_only=True``): a state dict, or ``{"state_dict": ...}``; strips
    ``module.`` prefixes. Raises ``ValidationError`` naming the path."""
    p = Path(path)
    if not p.is_file():
        raise ValidationError("weights file not found", path=str(p))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValidationError(f"cannot read weights ({type(e).__name__}: {str(e)[:120]})",
                              path=str(p)) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValidationError("not a state dict (expected name -> tensor)", path=str(p))
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load pretrained weights into ``model`` in place and return it; raises ``ValidationError`` on misfit."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {k}: file {tuple(state[k].shape)} "
                         f"vs model {tuple(own[k].shape)}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise ValidationError(f"weights do not fit {type(model).__name__}: " + "; ".join(parts),
                              path=str(path))
    model.load_state_dict(state, strict=False)
    return model


def num_classes_of(model: nn.Module) -> int:
    """Number of outputs of the model's last Linear layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValidationError("the model has no Linear classifier layer", field="model")
    return linears[-1].out_features
