"""Importing torchvision beside torch's CPU build.

PyPI's torchvision wheels are CUDA builds whose C ops cannot load beside a CPU torch; torchvision 0.28 then
fails at import, registering fake kernels for ``torchvision::nms`` and ``qnms`` ("operator torchvision::nms
does not exist"). Declaring those two schemas first lets its pure-Python part (transforms, which open_clip
and transformers' image processors use) import; the detection ops stay unavailable. Where torch and
torchvision builds match, this does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_SCHEMAS: list[torch.library.Library] = []  # kept alive: a Library unregisters when collected


def declare_torchvision_ops() -> None:
    """Make `import torchvision` work when its C extension cannot load (call before anything imports it)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.origin or "torchvision" in sys.modules or _SCHEMAS:
        return
    try:
        torch.ops.load_library(str(Path(spec.origin).parent / "_C.so"))
    except OSError:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _SCHEMAS.append(lib)
