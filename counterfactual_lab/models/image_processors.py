"""Image processors that do not need torchvision, chosen silently when it is not installed.

transformers 5 made ``CLIPImageProcessor`` (and its kin) the torchvision-backed class. Without
torchvision, transformers falls back to the PIL class (``CLIPImageProcessorPil``) by itself,
but warns on every run ("requires torchvision (not installed)"): diffusers imports these names
when any pipeline loads. The README's install has no torchvision (a PyPI torchvision pulls a
CUDA build of torch), so that warning is one a user cannot act on. :func:`prefer_pil_image_processors`
binds the names to the PIL classes first, which is the same fallback, minus the warning.
With torchvision installed, or a transformers without the ``...Pil`` classes, it does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
import threading

# The processor names diffusers' pipeline modules import from transformers (and BLIP's, a captioner under audit).
PROCESSOR_NAMES = ("CLIPImageProcessor", "SiglipImageProcessor", "BlipImageProcessor")

_lock = threading.Lock()
_done = False


def prefer_pil_image_processors() -> None:
    """Bind ``transformers.<Name>ImageProcessor`` to its PIL twin when torchvision is absent (idempotent)."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
        if importlib.util.find_spec("torchvision") is not None:
            return
        # here, not at the top: only when torchvision is missing
        import transformers

        for name in PROCESSOR_NAMES:
            pil_class = getattr(transformers, f"{name}Pil", None)
            if pil_class is None:
                continue
            # transformers' lazy module may replace itself in sys.modules on first use: bind the
            # name on the module object that `from transformers import ...` will read.
            for module in {id(transformers): transformers, id(sys.modules["transformers"]): sys.modules["transformers"]}.values():
                setattr(module, name, pil_class)
