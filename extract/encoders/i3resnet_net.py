"""The inflated 3-D ResNet of Merlin's image encoder, in plain torch, with Merlin's layer names.

Re-derived from Merlin's ``I3ResNet`` (StanfordMIMI/Merlin ``merlin/models/i3res.py`` and ``inflate.py``, MIT):
torchvision's bottleneck ResNet with its 2-D layers inflated to 3-D. The stem is a 3x7x7 convolution striding
1x2x2 and a 3x3x3 max-pool striding 2 in all axes; each bottleneck is 1x1x1 -> 3x3x3 (carrying the stage's stride
in all three axes) -> 1x1x1, with a strided 1x1x1 projection on the residual where the shape changes. Merlin feeds
a grey (B, 1, H, W, D) volume, permutes it to (B, 1, D, H, W) and repeats it to three channels. The heads are
1x1x1 convolutions on the globally averaged last stage: ``classifier`` (phenotypes) and ``contrastive_head``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Bottleneck3d(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv3d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm3d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class I3ResNet(nn.Module):
    """Input (B, 1, H, W, D) in [0, 1]; :meth:`features` -> (B, 32 * width), :meth:`contrastive` -> heads' dim.

    ``config`` has ``layers`` (blocks per stage), ``width`` (stem channels), ``phenotypes`` and
    ``contrastive_dim`` (see ``merlin.I3ResNetConfig``).
    """

    def __init__(self, config: Any):
        super().__init__()
        width = config.width
        self.conv1 = nn.Conv3d(3, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        inplanes = width
        for stage, blocks in enumerate(config.layers):
            planes = width * 2**stage
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck3d(inplanes, planes, 2 if stage > 0 and block == 0 else 1))
                inplanes = planes * 4
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layer))
        self.classifier = nn.Conv3d(inplanes, config.phenotypes, 1)
        self.contrastive_head = nn.Conv3d(inplanes, config.contrastive_dim, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The global average of the last stage (Merlin's ``ImageEmbedding`` output)."""
        x = x.permute(0, 1, 4, 2, 3).expand(-1, 3, -1, -1, -1)  # (B, 1, H, W, D) -> (B, 3, D, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3, 4))

    def contrastive(self, pooled: torch.Tensor) -> torch.Tensor:
        """Merlin's 512-d contrastive image embedding: the 1x1x1 head on the pooled features."""
        return nn.functional.linear(pooled, self.contrastive_head.weight.flatten(1), self.contrastive_head.bias)
