# generated from chapters/00_welcome.ipynb: edit the notebook, then run make export
"""00 · Welcome to From Zero (欢迎 · 从零开始大模型开发与微调)"""


import math

import torch
from torch import nn


def spirals(n, noise=0.25):
    """n points on two spiral arms (label 0 or 1), noisier further out."""
    turn = torch.sqrt(torch.rand(n)) * 3 * math.pi
    label = torch.randint(0, 2, (n,))
    radius, angle = turn / math.pi, turn + label * math.pi
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return points + noise * torch.randn(n, 2) * (radius[:, None] / 3 + 0.2), label


class SpiralNet(nn.Module):
    """Two hidden layers of 64 ReLU units; forward returns the cross-entropy loss."""

    def __init__(self, width=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 2))

    def forward(self, x, y):
        return nn.functional.cross_entropy(self.net(x), y)


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'spirals', 'SpiralNet',
]
