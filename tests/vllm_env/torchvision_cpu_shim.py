"""Lets PyPI's torchvision import beside a CPU-only torch (the `make test-vllm` environment).

vLLM's LLaVA code imports torchvision (through transformers' Pixtral image processor).
The torchvision wheels on PyPI are CUDA builds: beside the CPU build of torch their
compiled ops library does not load, and `import torchvision` then fails on its own
registration of `torchvision::nms` and `torchvision::qnms` ("operator ... does not
exist"). Declaring those two ops' schemas first lets it import; its Python image
transforms, which is what the image processors use, do not need the compiled ops (calling
`torchvision.ops.nms` still fails). Where torchvision's ops library loads (a CPU build of
torchvision, from the PyTorch CPU index), the shim loads it and declares nothing.

Installed as a module plus a .pth file that imports it; it waits for torchvision's first
import rather than importing torch in every interpreter of the environment.
"""

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


class _DeclareOpsFirst(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        for lib in Path(spec.origin).parent.glob("_C.*") if spec and spec.origin else ():
            try:
                torch.ops.load_library(str(lib))
                return None  # the ops library loads: torchvision works as it is
            except (ImportError, OSError):
                pass
        for op in ("nms", "qnms"):
            try:
                torch.library.define(f"torchvision::{op}", _SCHEMA)
            except RuntimeError:  # already declared: torchvision's own ops library loaded
                pass
        return None  # the ordinary finders import torchvision itself


sys.meta_path.insert(0, _DeclareOpsFirst())
