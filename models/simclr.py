"""SimCLR (Chen et al. 2020): ResNet-50 trunk, 2-layer projection head, symmetric NT-Xent over 2N views.

* ``model(x [B, 3, H, W])`` -> projections ``z [B, 128]`` (``g(h) = W2 ReLU(W1 h)``, ``h`` the 2048-d pooled
  ResNet-50 features; :meth:`SimCLR.encode` returns ``h``).
* Training step (the registry's ``loss_fn``): two random views of each image (synthetic tensor augmentation:
  random resized crop, horizontal flip, brightness/contrast jitter; see :func:`augment`) go through the network as
  one batch of 2N, and :func:`nt_xent` is the loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Batch, image_batch, register_model
from .resnet import Bottleneck, ResNet

__all__ = ["SimCLR", "augment", "nt_xent"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Normalised-temperature cross entropy over the 2N views ``z = [z1; z2]`` (``z1, z2: [N, d]``).

    With ``s_ij = cos(z_i, z_j) / t``, view ``i``'s positive ``p(i)`` is the other view of the same image and

        loss = 1/(2N) sum_i -log( exp(s_i,p(i)) / sum_{k != i} exp(s_ik) )

    i.e. both directions (z1 -> z2 and z2 -> z1) and the other views of *both* sets as negatives.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))  # k != i
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positives)


def augment(x: torch.Tensor, generator: torch.Generator | None = None, min_scale: float = 0.3) -> torch.Tensor:
    """A random view of each image ``[B, C, H, W] -> [B, C, H, W]`` (synthetic stand-in for SimCLR's pipeline).

    Per image: a crop of ``min_scale..1`` of each side at a random place, bilinearly resized back (random resized
    crop), a horizontal flip with probability 1/2, and brightness ``x + U(-0.2, 0.2)`` / contrast ``x * U(0.8, 1.2)``.
    The crop is an affine sampling grid, so the whole batch is one ``grid_sample`` call.
    """
    b = x.shape[0]
    opts = {"generator": generator, "device": "cpu"}
    scale = min_scale + (1 - min_scale) * torch.rand(b, 2, **opts)  # crop side / image side, (x, y)
    centre = (1 - scale) * (2 * torch.rand(b, 2, **opts) - 1)  # keeps the crop inside [-1, 1]
    flip = torch.where(torch.rand(b, **opts) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale[:, 0] * flip, scale[:, 1]
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    bright = (0.4 * torch.rand(b, 1, 1, 1, **opts) - 0.2).to(x.device, x.dtype)
    contrast = (0.8 + 0.4 * torch.rand(b, 1, 1, 1, **opts)).to(x.device, x.dtype)
    return v * contrast + bright


class SimCLR(nn.Module):
    """ResNet-50 encoder ``f`` (no classifier) and projection head ``g`` (2048 -> 2048 -> 128).

    Args:
        projection_dim: output width of ``g``.
        hidden_dim: hidden width of ``g``.
        temperature: NT-Xent temperature used by :meth:`loss`.
    """

    def __init__(self, projection_dim: int = 128, hidden_dim: int = 2048, temperature: float = 0.5) -> None:
        super().__init__()
        self.encoder = ResNet(Bottleneck, (3, 4, 6, 3), num_classes=0)
        self.projector = nn.Sequential(nn.Linear(self.encoder.num_features, hidden_dim), nn.ReLU(inplace=True),
                                       nn.Linear(hidden_dim, projection_dim))
        self.temperature = temperature

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Representation ``h = f(x)``: ``[B, 3, H, W] -> [B, 2048]``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projection ``z = g(f(x))``: ``[B, 3, H, W] -> [B, projection_dim]``."""
        return self.projector(self.encode(x))

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """NT-Xent of two augmented views of ``x``, run as one batch of 2N (BatchNorm sees both views)."""
        views = torch.cat([augment(x, generator), augment(x, generator)])
        z1, z2 = self(views).chunk(2)
        return nt_xent(z1, z2, self.temperature)


def _ssl_batch(batch_size: int, input_shape: Any, generator: torch.Generator | None = None) -> Batch:
    return Batch((image_batch(batch_size, input_shape, generator),), None)


def _simclr_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model.loss(*batch.inputs)  # type: ignore[operator]


def _simclr_outputs(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """The accuracy gate's tensors: projections ``[2B, 128]`` of two seeded views of each image and their NT-Xent
    loss (the views come from a CPU generator seeded 0, so every device and precision sees the same pixels)."""
    (x,) = batch.inputs
    g = torch.Generator().manual_seed(0)
    views = torch.cat([augment(x, g), augment(x, g)])
    z = model(views)
    z1, z2 = z.chunk(2)
    return {"projections": z, "loss": nt_xent(z1, z2, model.temperature)}  # type: ignore[arg-type]


@register_model(family="simclr", task="self-supervised", input_shape=(3, 224, 224), batch_fn=_ssl_batch,
                loss_fn=_simclr_loss, outputs_fn=_simclr_outputs)
def simclr_resnet50(**kwargs: Any) -> SimCLR:
    """SimCLR ResNet-50 with a 2048-2048-128 projection head (28.0 M params)."""
    return SimCLR(**kwargs)
