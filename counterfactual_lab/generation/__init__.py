"""Counterfactual image generation: the diffusion editing methods behind one interface,
and the batch runner that fills the content-addressed image store."""

from counterfactual_lab.generation.batch import (
    CACHED,
    FAILED,
    GENERATED,
    GenerationRecord,
    generate_batch,
    is_out_of_memory,
)
from counterfactual_lab.generation.editors import (
    EDITORS,
    ImageEditor,
    Img2ImgEditor,
    InstructPix2PixEditor,
    LeditsEditor,
    clear_editor_cache,
    concept_word,
    make_editor,
    validate_generation,
)
from counterfactual_lab.generation.inpaint import InpaintEditor
from counterfactual_lab.generation.text2image import TextToImageSetsEditor

# Registered here, not in editors.py: both modules build on editors.DiffusersEditor.
EDITORS[TextToImageSetsEditor.method] = TextToImageSetsEditor
EDITORS[InpaintEditor.method] = InpaintEditor

__all__ = [
    "CACHED",
    "EDITORS",
    "FAILED",
    "GENERATED",
    "GenerationRecord",
    "ImageEditor",
    "InpaintEditor",
    "TextToImageSetsEditor",
    "Img2ImgEditor",
    "InstructPix2PixEditor",
    "LeditsEditor",
    "clear_editor_cache",
    "concept_word",
    "generate_batch",
    "is_out_of_memory",
    "make_editor",
    "validate_generation",
]
