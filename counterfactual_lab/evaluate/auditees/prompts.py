"""How a probe prompt reaches a generative model: the text it reads, with the image where it goes.

A prompt in the config is a template: ``{image}`` marks where the image goes, ``{options}`` (the
choice prompt only) is replaced by the labels joined with ", ". Two formats
(``audit.prompt_format``):

* ``chat``: the prompt is the user's message; the processor's chat template renders it, with
  an image item where ``{image}`` is (first, when the prompt has none), and adds the assistant's
  turn (``add_generation_prompt``), so the model's next token is its answer;
* ``raw``: the prompt is the model's text as it is; ``{image}`` becomes the processor's image
  token (``<image>`` for LLaVA), or nothing for a model that takes its image another way (a BLIP
  captioner reads ``pixel_values``; PaliGemma's processor places its image tokens itself).

``auto`` picks ``chat`` when the processor has a chat template, else ``raw``.

:func:`check_prompt` runs a rendered prompt and a small blank image through the processor and
refuses a prompt whose text gives the model no place for its image (a raw LLaVA prompt without
``{image}``, a chat template that drops image items): the model would fail, or answer without
seeing the image, on every row.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from counterfactual_lab.errors import ConfigError
from counterfactual_lab.plan.person_words import fill_person

_IMAGE_MARK = "\uFFFCIMAGE\uFFFC"  # an object replacement character pair no prompt contains


def resolve_format(processor: Any, prompt_format: str) -> str:
    """``chat`` or ``raw`` for ``processor`` (``auto``: chat when it has a chat template)."""
    has_template = bool(getattr(processor, "chat_template", None))
    if prompt_format == "auto":
        return "chat" if has_template else "raw"
    if prompt_format == "chat" and not has_template:
        raise ConfigError(
            "audit.prompt_format is chat, but the model's processor has no chat template; "
            "use prompt_format: raw and write {image} where the image token goes"
        )
    return prompt_format


def image_token(processor: Any) -> str | None:
    """The processor's image placeholder token, if it has one."""
    token = getattr(processor, "image_token", None)
    return token if isinstance(token, str) and token else None


def render(processor: Any, prompt_format: str, template: str, options: list[str] | None = None) -> str:
    """The model's input text for ``template`` (the module doc), ending where the answer starts."""
    filled = template.format(image=_IMAGE_MARK, options=", ".join(options or []))
    if prompt_format == "raw":
        return filled.replace(_IMAGE_MARK, image_token(processor) or "")
    before, marked, after = filled.partition(_IMAGE_MARK)
    content: list[dict[str, str]] = []
    if not marked:
        before, after = "", filled
    if before:
        content.append({"type": "text", "text": before})
    content.append({"type": "image"})
    if after:
        content.append({"type": "text", "text": after})
    conversation = [{"role": "user", "content": content}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def answer_separator(prompt_text: str) -> str:
    """What goes between a rendered prompt and an answer option: nothing after whitespace
    (``...assistant\\n``), else one space (``ASSISTANT: doctor``)."""
    return "" if not prompt_text or prompt_text[-1].isspace() else " "


def check_prompt(processor: Any, prompt_format: str, template: str, key: str, model: str) -> None:
    """ConfigError when ``template`` rendered for ``model`` gives its image no place (module doc)."""

    # {person} is filled per pair at run time (the attribute's word); the neutral word stands in here.
    text = render(processor, prompt_format, fill_person(template, None), options=["a", "b"])
    blank = Image.new("RGB", (32, 32))
    token = image_token(processor)
    fix = (f"write {{image}} where the image token {token} goes" if prompt_format == "raw"
           else "the processor's chat template must render image items")
    try:
        inputs = processor(images=[blank], text=[text], return_tensors="pt")
    except ValueError as exc:
        raise ConfigError(f"{key}: {template!r} gives {model} no place for its image ({str(exc).splitlines()[0]}); {fix}") from None
    if token is None:
        return  # the model takes its image another way (pixel values beside the text)
    tokenizer = getattr(processor, "tokenizer", processor)
    token_id = tokenizer.convert_tokens_to_ids(token)
    if int((inputs["input_ids"] == token_id).sum()) == 0:
        raise ConfigError(f"{key}: {template!r} gives {model} no place for its image ({token} never appears); {fix}")
