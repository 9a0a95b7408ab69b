"""Small building blocks shared by the classification families (EfficientNet, ViT, Swin).

Not a model family: ``models/__init__.py`` skips this module during discovery. Module layouts follow torchvision's
(``ConvBNAct`` children ``0/1/2``, ``MLP`` children ``0..4``) so torchvision state dicts map by renames only.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ConvBNAct", "MLP", "StochasticDepth", "stochastic_depth"]


def stochastic_depth(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drop whole residual branches per sample ("row" mode, Huang et al. 2016).

    In training, each sample ``b`` of ``x`` ``[B, ...]`` is kept with probability ``1 - p`` and rescaled by
    ``1 / (1 - p)`` (so the expectation is unchanged), otherwise zeroed: ``y[b] = x[b] * m_b / (1 - p)``,
    ``m_b ~ Bernoulli(1 - p)``. Identity in eval mode or when ``p == 0``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"stochastic depth probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    survival = 1.0 - p
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(survival)
    if survival > 0.0:  # p == 1 drops every branch; nothing to rescale
        keep.div_(survival)
    return x * keep


class StochasticDepth(nn.Module):
    """Module form of :func:`stochastic_depth` (drop path); ``p`` is the drop probability."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"stochastic depth probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvBNAct(nn.Sequential):
    """``Conv2d(bias=False) -> BatchNorm2d -> activation`` with symmetric padding ``(k - 1) // 2``.

    ``[B, cin, H, W] -> [B, cout, ceil(H / stride), ceil(W / stride)]`` for odd ``kernel``. With
    ``groups == cin == cout`` the conv is depthwise and stays a plain ``nn.Conv2d`` (the depthwise Triton kernel
    swaps such modules generically). BatchNorm uses PyTorch's defaults (eps 1e-5, momentum 0.1), as torchvision's
    EfficientNet-B0..B7 do.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.SiLU) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class MLP(nn.Sequential):
    """Transformer feed-forward block ``Linear(dim, hidden) -> GELU -> Dropout -> Linear(hidden, dim) -> Dropout``.

    ``[..., dim] -> [..., dim]``; GELU is the exact (erf) form, as in torchvision's ViT and Swin.
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))
