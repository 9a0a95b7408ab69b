"""Model registry: variants are data, entrypoints are a few lines.

Every model is registered with :func:`register_model` on a small builder function. The registry entry
(:class:`ModelSpec`) carries what the harness needs to run the model without knowing its family: the default
input shape, how to make a synthetic batch (inputs and training targets), how to compute a training loss, which
kernel hot paths it contains, and which torchvision builder is its twin (if any).

    >>> import models
    >>> m = models.create("resnet18")
    >>> spec = models.get_spec("resnet18")
    >>> batch = spec.make_batch(2)
    >>> logits = spec.forward(m, batch)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Batch",
    "ModelSpec",
    "UnknownModelError",
    "register_model",
    "get_spec",
    "list_models",
    "create",
    "closest",
]

HOT_PATHS = ("window_attention", "depthwise_conv", "roi_align")


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered; its message names the closest match."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@dataclass
class Batch:
    """A synthetic batch: positional ``inputs`` for the forward call and a ``target`` for the training loss."""

    inputs: tuple[Any, ...]
    target: Any = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        return Batch(_move(self.inputs, device, dtype), _move(self.target, device, None))


def _move(obj: Any, device: torch.device | str, dtype: torch.dtype | None) -> Any:
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point():
            return obj.to(device=device, dtype=dtype)
        return obj.to(device=device)
    if isinstance(obj, tuple):
        return tuple(_move(o, device, dtype) for o in obj)
    if isinstance(obj, list):
        return [_move(o, device, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _move(v, device, dtype) for k, v in obj.items()}
    return obj


def image_batch(batch_size: int, input_shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard-normal images ``[B, C, H, W]``."""
    return torch.randn(batch_size, *input_shape, generator=generator)


def classification_batch(
    batch_size: int, input_shape: Sequence[int], num_classes: int = 1000, generator: torch.Generator | None = None
) -> Batch:
    x = image_batch(batch_size, input_shape, generator)
    y = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return Batch((x,), y)


def default_forward(model: nn.Module, batch: Batch) -> Any:
    return model(*batch.inputs)


def cross_entropy_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(model(*batch.inputs).float(), batch.target)


Outputs = dict[str, torch.Tensor]


def forward_outputs(name: str) -> Callable[[nn.Module, Batch], Outputs]:
    """``outputs_fn`` for models whose plain forward output is the tensor to compare: ``{name: model(*inputs)}``.

    Marked ``uses_forward``: the accuracy gate then calls it on the timed (possibly compiled) module itself.
    """

    def fn(model: nn.Module, batch: Batch) -> Outputs:
        return {name: model(*batch.inputs)}

    fn.uses_forward = True  # type: ignore[attr-defined]
    fn.__name__ = f"forward_outputs_{name}"
    return fn


logits_outputs = forward_outputs("logits")


@dataclass(frozen=True)
class ModelSpec:
    """What the harness needs to know about one registered model.

    Attributes:
        name: registry key, e.g. ``"resnet50"``.
        family: architecture family (one file in ``models/``), e.g. ``"resnet"``.
        task: ``classification`` | ``detection`` | ``segmentation`` | ``self-supervised``.
        builder: ``builder(**kwargs) -> nn.Module``.
        input_shape: default ``(C, H, W)`` at which FLOPs are reported.
        hot_paths: kernel hot paths inside the model (subset of ``HOT_PATHS``).
        torchvision: name of the torchvision builder with the same architecture, if any.
        num_classes: classes of the default head (used by the synthetic target generator).
        batch_fn: ``batch_fn(batch_size, input_shape, generator) -> Batch`` on the CPU.
        forward_fn: inference call, ``forward_fn(model, batch) -> output``.
        loss_fn: training loss, ``loss_fn(model, batch) -> scalar``; the model is in train mode.
        outputs_fn: what the accuracy gate (:mod:`bench.accuracy`) compares against the float64 model,
            ``outputs_fn(model, batch) -> {name: tensor}`` in eval mode: fixed-shape tensors computed before any
            data-dependent step (no NMS, no top-k), deterministic given the weights and the batch (seeded masks and
            views). Classification: ``{"logits"}``.
        train_check: ``""`` if a train step's loss and gradients are comparable across precisions and devices,
            else why not (the accuracy gate then skips train rows of this model and says why).
    """

    name: str
    family: str
    task: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    hot_paths: tuple[str, ...] = ()
    torchvision: str | None = None
    num_classes: int = 1000
    batch_fn: Callable[..., Batch] | None = None
    forward_fn: Callable[[nn.Module, Batch], Any] = default_forward
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = cross_entropy_loss
    outputs_fn: Callable[[nn.Module, Batch], Outputs] = logits_outputs
    train_check: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def make_batch(
        self,
        batch_size: int,
        input_shape: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> Batch:
        """A reproducible synthetic batch (inputs and targets) on ``device``; floats cast to ``dtype`` if given."""
        shape = tuple(input_shape or self.input_shape)
        g = torch.Generator().manual_seed(seed)
        if self.batch_fn is None:
            b = classification_batch(batch_size, shape, self.num_classes, g)
        else:
            b = self.batch_fn(batch_size, shape, g)
        return b.to(device, dtype)

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        return self.forward_fn(model, batch)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.loss_fn(model, batch)

    def outputs(self, model: nn.Module, batch: Batch) -> Outputs:
        return self.outputs_fn(model, batch)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    *,
    family: str,
    task: str = "classification",
    input_shape: tuple[int, int, int] = (3, 224, 224),
    hot_paths: Sequence[str] = (),
    torchvision: str | None = None,
    num_classes: int = 1000,
    batch_fn: Callable[..., Batch] | None = None,
    forward_fn: Callable[[nn.Module, Batch], Any] = default_forward,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = cross_entropy_loss,
    outputs_fn: Callable[[nn.Module, Batch], Outputs] | None = None,
    train_check: str = "",
    name: str | None = None,
    **extra: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder under its function name (or ``name``). Raises on duplicates.

    ``outputs_fn`` defaults to the logits for ``task="classification"``; every other task must declare it.
    """
    unknown = set(hot_paths) - set(HOT_PATHS)
    if unknown:
        raise ValueError(f"unknown hot paths {sorted(unknown)}; valid: {HOT_PATHS}")
    if outputs_fn is None:
        if task != "classification":
            raise ValueError(f"task {task!r} must declare outputs_fn (the tensors the accuracy gate compares)")
        outputs_fn = logits_outputs

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = ModelSpec(
            name=key,
            family=family,
            task=task,
            builder=fn,
            input_shape=tuple(input_shape),  # type: ignore[arg-type]
            hot_paths=tuple(hot_paths),
            torchvision=torchvision,
            num_classes=num_classes,
            batch_fn=batch_fn,
            forward_fn=forward_fn,
            loss_fn=loss_fn,
            outputs_fn=outputs_fn,
            train_check=train_check,
            description=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
            extra=dict(extra),
        )
        return fn

    return deco


def unregister_model(name: str) -> None:
    """Remove a registration (used by tests that inject failing models)."""
    _REGISTRY.pop(name, None)


def closest(name: str, choices: Sequence[str]) -> str | None:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return match[0] if match else None


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = closest(name, list(_REGISTRY))
        did = f" (did you mean {hint!r}?)" if hint else ""
        raise UnknownModelError(
            f"unknown model {name!r}{did}; valid models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_models(task: str | None = None, family: str | None = None) -> list[str]:
    return sorted(
        n for n, s in _REGISTRY.items() if (task is None or s.task == task) and (family is None or s.family == family)
    )


def create(name: str, kernels: str = "eager", kernel_names: Sequence[str] | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry key.
        kernels: ``"eager"`` (pure PyTorch) or ``"triton"`` (every hot path the model contains runs through our
            Triton kernel; see :mod:`kernels`).
        kernel_names: with ``kernels="triton"``, switch only these kernels (one at a time studies).
        **kwargs: forwarded to the builder (e.g. ``num_classes``).
    """
    spec = get_spec(name)
    model = spec.builder(**kwargs)
    if kernels == "triton":
        from kernels.registry import patch_model

        patch_model(model, kernel_names)
    elif kernels != "eager":
        raise ValueError(f"unknown kernels mode {kernels!r}; valid: eager, triton")
    return model
