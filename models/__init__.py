"""Reference PyTorch implementations of classic vision architectures, behind one registry.

Each family lives in its own module (``models/resnet.py``, ``models/swin.py``, ...); importing this package
imports every family module so their ``@register_model`` entrypoints run.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

from .registry import (
    Batch,
    ModelSpec,
    UnknownModelError,
    create,
    get_spec,
    list_models,
    register_model,
)

__all__ = ["Batch", "ModelSpec", "UnknownModelError", "create", "get_spec", "list_models", "register_model"]

# Eager, explicit discovery: every public module in this package is a model family.
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if not _info.name.startswith("_") and _info.name not in ("registry", "layers"):
        importlib.import_module(f"{__name__}.{_info.name}")

# User plug-ins: VISIONBENCH_PLUGINS="pkg.mod1,pkg.mod2" imports modules that register more models. Worker processes
# (--isolate, Ray) inherit the variable, so plug-in models work there too.
for _mod in filter(None, (m.strip() for m in os.environ.get("VISIONBENCH_PLUGINS", "").split(","))):
    importlib.import_module(_mod)
