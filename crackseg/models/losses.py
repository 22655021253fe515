"""Loss combinations of smp.losses (BCE, Dice and focal come from smp itself)."""

from __future__ import annotations

import torch
from torch import nn


class WeightedSum(nn.Module):
    """``sum(weight * loss(logits, target))`` over named losses, e.g. BCE + Dice."""

    def __init__(self, losses: dict[str, nn.Module], weights: dict[str, float] | None = None):
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = {name: 1.0 for name in losses} | dict(weights or {})

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.losses.items())
