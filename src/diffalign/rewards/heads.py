"""The linear reward head shared by the LAION aesthetic predictor and ImageReward."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def linear_head(widths: Sequence[int], dropouts: Sequence[float]) -> nn.Sequential:
    """Linear layers widths[0] -> ... -> widths[-1] with dropout after the first len(dropouts), no activations.

    With widths (768, 1024, 128, 64, 16, 1) and dropouts (0.2, 0.2, 0.1) this is the aesthetic
    predictor's and ImageReward's head: its linear layers sit at indices 0, 2, 4, 6, 7.
    """
    layers: list[nn.Module] = []
    for i, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(width_in, width_out))
        if i < len(dropouts):
            layers.append(nn.Dropout(dropouts[i]))
    return nn.Sequential(*layers)
