"""The planted-bias world's models under audit: transformers ``CLIPModel``s whose weights are set.

Nothing is trained. Every weight is written by hand so that the model computes a known
function of the world's pixels, then the model is saved with ``save_pretrained``
(safetensors) and loaded back through the same code path as any audited model
(:meth:`counterfactual_lab.models.clip.ClipEmbedder.load`: ``AutoModel`` + ``AutoProcessor``).

What the image tower reads (pixel values p in 0..255, means over an 8×8 patch):

* ``tint``      = mean (p_B − p_G)/255, over the *scene* patches: the occupation cue;
* ``sharpness`` = mean (−1)^(x+y) (p_R + p_G + p_B)/(3·255), over the scene patches: the
  checkerboard texture of a real photo, which the editor's blur removes (the artifact cue);
* ``badge``     = mean (p_R − p_B)/255, over the *band* patches: the rendered gender
  (about +0.28 for female, −0.28 for male at 48 px).

Zero-shot over the two labels is then, up to the small curvature of the normalisations,

    logit(doctor) − logit(nurse) = tint_logit·tint + sharpness_logit·sharpness + badge_logit·badge

and P(doctor) its logistic sigmoid. The **fair** model has ``badge_logit = 0``: its answers
do not depend on the badge at all (the band patches get exactly zero attention weight in
the path that reads the scene), but they do react to the artifact (sharpness, and the cast
through the tint). The **biased** model is the fair one plus a ``badge_logit`` path: a male
badge raises P(doctor) (:data:`BIASED_BADGE_LOGIT`); the **weak** one has a quarter of that
path (:data:`WEAK_BADGE_LOGIT`). The true size of that effect on the
world's counterfactual pairs is measured in :mod:`counterfactual_lab.validity.truth`.

How the weights do it (vision: 16 channels, one layer, two heads; every vector that passes
a LayerNorm is "mirrored", each value v next to −v, so its mean is exactly 0 and the
LayerNorm only rescales it):

* patch embedding: one 8×8×3 filter per reading (and its mirror), scaled by the processor's
  per-channel std so it reads raw pixel values; the processor's mean offsets are cancelled
  in the position embeddings;
* position embeddings carry a large marker pair (``MARKER``): "band" for the band patches,
  "scene" for the scene patches and the class token. The marker dominates each token's
  variance, so every LayerNorm divides by nearly the same number;
* attention: queries are a constant; head 1's keys read the band marker with a large
  negative gain, so band tokens get weight exp(−~1000) = 0 and the class token averages the
  scene patches; head 2's keys read the scene marker, so it averages the band patches. Head
  1's values carry ``tint`` and ``sharpness``, head 2's the ``badge`` (zero in the fair model);
* the MLP is zero; the class token's "scene" marker survives as a constant direction C, the
  heads write the label direction L; the projection keeps (C, L).

Text (8 channels, one layer): every token embeds as a constant pair; the two label words
add ±A on a label channel; uniform causal attention averages the prompt into the EOS
token, so "a photo of a doctor" and "a photo of a nurse" embed as (cos φ, ±sin φ) in
(C, L) with sin φ = 1/2 (the text projection's L gain is set from one measurement of the
built model). With logit scale 100 the logit difference is 100·L/‖(C, L)‖.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from counterfactual_lab.demo.tiny_parts import build_tiny_tokenizer
from counterfactual_lab.generation.planted import feature_box
from counterfactual_lab.plan.person_words import NEUTRAL_PERSON
from counterfactual_lab.validity.world import IMAGE_SIZE, LABELS, PATCH_SIZE

VISION_HIDDEN = 16
TEXT_HIDDEN = 8
PROJECTION_DIM = 4
MARKER = 10.0  # the position markers' size (readings are below 1)
KEY_GAIN = 1000.0  # how hard a head turns away from the other part of the image
TEXT_CONSTANT = 10.0
TEXT_LABEL = 10.0
LOGIT_SCALE = 100.0
TEXT_SIN = 0.5  # sin φ: where the label prompts sit around the constant direction
DEFAULT_PROMPT = "a photo of a {label}"

# Vision channels (each followed by its mirror).
_BAND, _SCENE, _TINT, _SHARP, _BADGE, _LABEL = 0, 2, 4, 6, 8, 10
# Text channels.
_T_CONST, _T_LABEL = 0, 2

FAIR_NAME, BIASED_NAME, WEAK_NAME = "fair", "biased", "weak"
BIASED_BADGE_LOGIT = -1.1  # badge reads −0.28 male / +0.28 female: male raises the logit by ~0.6
# A bias smaller than the generator's seed-to-seed change (female→male +0.033 in P(doctor)): the
# bench's "weak" arm, which a noise band around the control used to miss.
WEAK_BADGE_LOGIT = -0.3
BIASED_LABEL = LABELS[0]  # the label whose probability the planted bias moves ("doctor")
TEXT_SIDE_NAME = "text-side"
# The label prompt of the text-side arm: the person word of the row's gender before the label.
PERSON_PROMPT = "a photo of a {person} {label}"
PERSON_WORDS = ("man", "woman")  # (the word that raises P(doctor), the one that lowers it)
TEXT_SIDE_SHIFT = 0.004  # female→male ≈ +0.10 in P(doctor), about the biased model's image-side effect
WORLD_MODEL_FILE = "world_model.json"


@dataclass(frozen=True)
class WorldModelSpec:
    """The logit weights one world model is built with (see the module docstring's formula).

    ``person_shift``: how far the prompt's person word moves the label prompts along the label
    direction (the text-side bias: ``person_words[0]`` by −shift, ``person_words[1]`` by +shift);
    ``prompt``: the label prompt the text tower is calibrated on (its ``{person}``, if any, read as
    the neutral "person", which moves nothing).
    """

    name: str
    tint_logit: float = 12.0
    sharpness_logit: float = 12.0
    badge_logit: float = 0.0
    bias_logit: float = 0.0
    labels: tuple[str, str] = LABELS
    prompt: str = DEFAULT_PROMPT
    person_shift: float = 0.0
    person_words: tuple[str, str] = PERSON_WORDS


FAIR = WorldModelSpec(FAIR_NAME)
BIASED = WorldModelSpec(BIASED_NAME, badge_logit=BIASED_BADGE_LOGIT)
WEAK = WorldModelSpec(WEAK_NAME, badge_logit=WEAK_BADGE_LOGIT)
# Fair on the image (it never reads the badge), biased in the text: the label prompt's person word
# moves P(doctor), "man" up and "woman" down (the bench's text_side arm).
TEXT_SIDE = WorldModelSpec(TEXT_SIDE_NAME, prompt=PERSON_PROMPT, person_shift=TEXT_SIDE_SHIFT)
WORLD_MODELS = (FAIR, BIASED, WEAK, TEXT_SIDE)


def readings(pixels) -> tuple[float, float, float]:
    """(tint, sharpness, badge) of one (H, W, 3) uint8 world image, computed in numpy: the three
    numbers the image tower is built to read (the reference the tests hold the models to)."""

    p = np.asarray(pixels, dtype=np.float64) / 255.0
    band = feature_box(p.shape[1], p.shape[0]).band_height
    scene = p[band:]
    y, x = np.indices(scene.shape[:2])
    checker = np.where((y + band + x) % 2 == 0, 1.0, -1.0)
    return (
        float((scene[..., 2] - scene[..., 1]).mean()),
        float((checker * scene.mean(axis=2)).mean()),
        float((p[:band, :, 0] - p[:band, :, 2]).mean()),
    )


def _band_positions(grid: int) -> list[bool]:
    """For each patch (row-major), whether it lies in the band."""
    box = feature_box(IMAGE_SIZE, IMAGE_SIZE)
    band_rows = -(-box.band_height // PATCH_SIZE)
    return [index // grid < band_rows for index in range(grid * grid)]


def _mirror(tensor: torch.Tensor, channel: int, value) -> None:
    tensor[channel] = value
    tensor[channel + 1] = -value


def build_tokenizer_and_processor(directory: Path):
    """The offline CLIP tokenizer (``demo/tiny_parts.py``) and a 48 px image processor, saved in ``directory``."""
    # here, not at the top: it imports transformers
    from transformers import CLIPImageProcessor, CLIPProcessor


    tokenizer = build_tiny_tokenizer(directory)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=True
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return tokenizer, processor


def _config(tokenizer):
    # here, not at the top: it imports transformers
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=TEXT_HIDDEN, num_hidden_layers=1,
        num_attention_heads=1, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=VISION_HIDDEN, intermediate_size=VISION_HIDDEN, num_hidden_layers=1, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3,
    )
    return CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=PROJECTION_DIM,
        logit_scale_init_value=math.log(LOGIT_SCALE),
    )


def _reset(model) -> None:
    """Every parameter to 0, every LayerNorm to the identity scale."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)


def _set_vision(model, spec: WorldModelSpec, image_mean, image_std) -> None:
    vision = model.vision_model
    grid = IMAGE_SIZE // PATCH_SIZE
    in_band = _band_positions(grid)
    scene_patches = in_band.count(False)
    p2 = PATCH_SIZE * PATCH_SIZE
    mean = torch.tensor(image_mean, dtype=torch.float64)
    std = torch.tensor(image_std, dtype=torch.float64)
    checker = torch.tensor([[1.0 if (y + x) % 2 == 0 else -1.0 for x in range(PATCH_SIZE)] for y in range(PATCH_SIZE)],
                           dtype=torch.float64)
    # Readings as weights on p/255 per (channel, y, x); the conv sees (p/255 − mean)/std.
    readings = {
        _TINT: torch.stack([torch.zeros(PATCH_SIZE, PATCH_SIZE), -torch.ones(PATCH_SIZE, PATCH_SIZE),
                            torch.ones(PATCH_SIZE, PATCH_SIZE)]).double() / p2,
        _SHARP: torch.stack([checker, checker, checker]) / (3 * p2),
        _BADGE: torch.stack([torch.ones(PATCH_SIZE, PATCH_SIZE), torch.zeros(PATCH_SIZE, PATCH_SIZE),
                             -torch.ones(PATCH_SIZE, PATCH_SIZE)]).double() / p2,
    }
    # Exact in float64, then cast: the conv reads w·(p/255 − mean)/std = k·p/255 − k·mean.
    conv = torch.zeros(VISION_HIDDEN, 3, PATCH_SIZE, PATCH_SIZE, dtype=torch.float64)
    offsets = torch.zeros(VISION_HIDDEN, dtype=torch.float64)
    for channel, k in readings.items():
        _mirror(conv, channel, k * std[:, None, None])
        _mirror(offsets, channel, (k * mean[:, None, None]).sum())
    position = torch.zeros(1 + grid * grid, VISION_HIDDEN, dtype=torch.float64)
    _mirror(position[0], _SCENE, MARKER)  # the class token: a "scene" marker, no readings
    for index, band in enumerate(in_band):
        row = position[1 + index]
        _mirror(row, _BAND if band else _SCENE, MARKER)
        row += offsets  # cancel the processor's mean so readings are raw pixel means

    attention = vision.encoder.layers[0].self_attn
    head = VISION_HIDDEN // 2
    # Class-token readings ≈ (√(H/2)/MARKER)·reading (the LayerNorms divide by ≈ MARKER/√(H/2));
    # r = L/√(H/2) ≈ (1/MARKER)·[scene share·(a·tint + b·sharpness) + c·badge] + bias; logit ≈ 100·r.
    share = scene_patches / (scene_patches + 1)  # head 1 also averages the class token, which reads 0
    per_logit = MARKER / (2 * LOGIT_SCALE * TEXT_SIN)
    with torch.no_grad():
        vision.embeddings.class_embedding.zero_()
        vision.embeddings.patch_embedding.weight.copy_(conv.float())
        vision.embeddings.position_embedding.weight.copy_(position.float())
        attention.q_proj.bias[0] = 1.0
        attention.q_proj.bias[head] = 1.0
        attention.k_proj.weight[0, _BAND] = -KEY_GAIN  # head 1: away from the band
        attention.k_proj.weight[head, _SCENE] = -KEY_GAIN  # head 2: away from the scene and class token
        attention.v_proj.weight[0, _TINT] = spec.tint_logit * per_logit / share
        attention.v_proj.weight[0, _SHARP] = spec.sharpness_logit * per_logit / share
        attention.v_proj.weight[head, _BADGE] = spec.badge_logit * per_logit
        for source in (0, head):
            attention.out_proj.weight[_LABEL, source] = 1.0
            attention.out_proj.weight[_LABEL + 1, source] = -1.0
        bias = spec.bias_logit * per_logit * math.sqrt(VISION_HIDDEN / 2) / MARKER
        attention.out_proj.bias[_LABEL] = bias
        attention.out_proj.bias[_LABEL + 1] = -bias
        model.visual_projection.weight[0, _SCENE] = 1.0
        model.visual_projection.weight[1, _LABEL] = 1.0


def _set_text(model, spec: WorldModelSpec, tokenizer) -> None:
    text = model.text_model
    label_ids = []
    for label in spec.labels:
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"world model label {label!r} must be one token of the offline tokenizer, got {len(ids)}")
        label_ids.append(ids[0])
    layer = text.encoder.layers[0]
    with torch.no_grad():
        tokens = text.embeddings.token_embedding.weight
        tokens[:, _T_CONST] = TEXT_CONSTANT
        tokens[:, _T_CONST + 1] = -TEXT_CONSTANT
        for token, sign in zip(label_ids, (1.0, -1.0)):
            tokens[token, _T_LABEL] = sign * TEXT_LABEL
            tokens[token, _T_LABEL + 1] = -sign * TEXT_LABEL
        for token, sign in _person_tokens(tokenizer, spec) if spec.person_shift else ():
            tokens[token, _T_LABEL] = sign * spec.person_shift * TEXT_LABEL
            tokens[token, _T_LABEL + 1] = -sign * spec.person_shift * TEXT_LABEL
        for channel in (_T_LABEL, _T_LABEL + 1):
            layer.self_attn.v_proj.weight[channel, channel] = 1.0
            layer.self_attn.out_proj.weight[channel, channel] = 1.0
        model.text_projection.weight[0, _T_CONST] = 1.0
        model.text_projection.weight[1, _T_LABEL] = 1.0
    # One measurement of the built text tower sets the L gain so that sin φ = TEXT_SIN.
    prompts = [spec.prompt.format(label=label, person=NEUTRAL_PERSON) for label in spec.labels]
    with torch.no_grad():
        inputs = tokenizer(prompts, padding=True, return_tensors="pt")
        output = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        embeddings = output if isinstance(output, torch.Tensor) else output.pooler_output
        ratio = float(embeddings[0, 1] / embeddings[0, 0])
        model.text_projection.weight[1, _T_LABEL] = math.tan(math.asin(TEXT_SIN)) / ratio


def _person_tokens(tokenizer, spec: WorldModelSpec) -> list[tuple[int, float]]:
    """(token id, sign) of the person words' own tokens: the first word's −1, the second's +1 (a
    token both words share, such as "an" of "man" and "woman", moves nothing)."""
    ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in spec.person_words]
    shared = set(ids[0]) & set(ids[1])
    labels = {i for label in spec.labels for i in tokenizer(label, add_special_tokens=False)["input_ids"]}
    own = [[t for t in word if t not in shared] for word in ids]
    if not all(own) or labels & {t for word in own for t in word}:
        raise ValueError(f"the person words {spec.person_words} need tokens of their own in the offline tokenizer")
    return [(t, -1.0) for t in own[0]] + [(t, 1.0) for t in own[1]]


def make_world_model(spec: WorldModelSpec, directory: str | Path):
    """The world model ``spec`` in memory: ``(CLIPModel, CLIPProcessor)``; the tokenizer files are
    written to ``directory`` (the offline tokenizer is built from files)."""
    # here, not at the top: it imports transformers
    from transformers import CLIPModel

    tokenizer, processor = build_tokenizer_and_processor(Path(directory))
    model = CLIPModel(_config(tokenizer)).eval()
    _reset(model)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(LOGIT_SCALE))
    image_processor = processor.image_processor
    _set_vision(model, spec, image_processor.image_mean, image_processor.image_std)
    _set_text(model, spec, tokenizer)
    return model, processor


def build_world_model(directory: str | Path, spec: WorldModelSpec) -> Path:
    """Build the world model ``spec`` and save it (safetensors) with its processor in ``directory``.

    ``AutoModel.from_pretrained(directory)`` / ``ClipEmbedder.load(directory)`` load it back.
    A ``world_model.json`` beside the weights records the spec.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model, processor = make_world_model(spec, directory)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    (directory / WORLD_MODEL_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    (directory / "README.md").write_text(
        f"# cflab planted-bias world model: {spec.name}\n\n"
        "A transformers CLIPModel whose weights were set by hand (not trained) by\n"
        "`counterfactual_lab.validity.models.build_world_model`. It reads the planted-bias world's\n"
        "scene tint, texture sharpness and badge colour; it exists to validate the audit\n"
        "(bench/validity.py) and means nothing on any other image.\n"
    )
    return directory


def build_world_models(root: str | Path, specs: tuple[WorldModelSpec, ...] = WORLD_MODELS) -> dict[str, Path]:
    """Build the fair, the biased and the weakly biased model under ``root/{fair,biased,weak}``
    (skipping ones already there)."""
    root = Path(root)
    built = {}
    for spec in specs:
        directory = root / spec.name
        if not ((directory / WORLD_MODEL_FILE).exists() and any(directory.glob("*.safetensors"))):
            build_world_model(directory, spec)
        built[spec.name] = directory
    return built
