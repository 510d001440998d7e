"""Tiny random-weight models for the generative audit: a chat VLM and the text models that score its answers.

Built offline, with their tokenizers made in code, saved with ``save_pretrained``
(safetensors) and loaded back through the same loaders as real models
(:mod:`counterfactual_lab.evaluate.auditees.loading`, :mod:`counterfactual_lab.evaluate.auditees.toxicity`):

* ``vlm``: a ``LlavaForConditionalGeneration`` (what ``AutoModelForImageTextToText`` loads for
  LLaVA 1.5): a tiny CLIP vision tower (32 px, 8 px patches: 16 image tokens) and a tiny Llama,
  with a ``LlavaProcessor`` that carries the ``<image>`` token and a chat template
  (``USER: <image>\\n<text> ASSISTANT:``, LLaVA 1.5's layout);
* ``toxicity``: a ``BertForSequenceClassification`` whose ``id2label`` is
  ``{0: "non-toxic", 1: "toxic"}``;
* ``sentiment``: a ``BertForSequenceClassification`` whose ``id2label`` is
  ``{0: "negative", 1: "neutral", 2: "positive"}`` (``audit.sentiment_model``);
* ``text-embedder``: a ``BertModel`` (``audit.text_embedder``: mean pooling over its last hidden states).

All share one byte-level BPE tokenizer (GPT-2's byte alphabet, so any text round-trips) whose
merges make common words single tokens, with and without a leading space ("yes", " Yes", the
digits, the labels of the demo), like real tokenizers do. Their outputs are noise: they test the
plumbing, and every folder carries ``TINY_MARKER`` so reports say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from counterfactual_lab.models.identity import TINY_MARKER
from counterfactual_lab.models.image_processors import prefer_pil_image_processors

VLM_NAME = "vlm"
TOXICITY_NAME = "toxicity"
SENTIMENT_NAME = "sentiment"
TEXT_EMBEDDER_NAME = "text-embedder"
AUDITEE_MODEL_NAMES = (VLM_NAME, TOXICITY_NAME, SENTIMENT_NAME, TEXT_EMBEDDER_NAME)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
IMAGE_TOKEN = "<image>"
TOXICITY_LABELS = {0: "non-toxic", 1: "toxic"}
SENTIMENT_LABELS = {0: "negative", 1: "neutral", 2: "positive"}

# LLaVA 1.5's conversation layout as a chat template: the image placeholder where the message
# puts it, the text, then the assistant's turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | upper }}: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% if not loop.last %}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)

# Words that become single tokens (with and without a leading space).
# Earlier words' merges outrank later ones: the labels come first, so "to" cannot split "doctor".
_WORDS = (
    "doctor nurse teacher engineer yes no Yes No YES NO 1 2 3 4 5 6 7 8 9 a an the of is are this that person people photo image picture describe "
    "yourself pretend you your I am answer question scale how what which who from to on in and or "
    "competent warm friendly kind smart capable cold lazy "
    "man woman young old elderly male female rate rating keywords characteristics"
).split()


@dataclass(frozen=True)
class VlmSize:
    """Widths of a random-weight LLaVA (vision tower + language model)."""

    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 4
    image_size: int = 32
    patch_size: int = 8
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    max_positions: int = 512


TINY_VLM = VlmSize()


def build_byte_bpe_tokenizer(words: tuple[str, ...] | list[str] = _WORDS, extra_words: tuple[str, ...] = ()):
    """A byte-level BPE ``PreTrainedTokenizerFast``, made in code: bos ``<s>`` prepended, pad ``<pad>``.

    The vocabulary is the special tokens, the 256 byte symbols and every merge that builds each
    of ``words`` (and " word") left to right, so those are single tokens.
    """
    # here, not at the top: it imports tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    # here, not at the top: it imports transformers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in dict.fromkeys([*words, *extra_words]):
        # The spaced form first: BPE applies merges by rank, and "Ġ"+"Y" must outrank "Y"+"e"
        # or " Yes" would end as "Ġ", "Yes".
        for form in ("Ġ" + word, word):
            current = form[0]
            for char in form[1:]:
                pair = (current, char)
                current += char
                if pair not in seen:
                    seen.add(pair)
                    merges.append(pair)
                vocab.setdefault(current, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def build_vlm(size: VlmSize = TINY_VLM, seed: int = 0, tokenizer=None):
    """(model, processor): a random-weight LLaVA in memory (seeded: same seed, same weights)."""

    prefer_pil_image_processors()
    # here, not at the top: transformers loads only when this is called
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = tokenizer or build_byte_bpe_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden, intermediate_size=size.vision_hidden * 2, num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads, image_size=size.image_size, patch_size=size.patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.text_hidden, intermediate_size=size.text_hidden * 2,
        num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_kv_heads, max_position_embeddings=size.max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    patches = (size.image_size // size.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=patches, vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size.image_size}, crop_size={"height": size.image_size, "width": size.image_size}
    )
    # num_additional_image_tokens=1: the CLS token, which the "default" strategy drops again.
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=size.patch_size,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1,
    )
    return model, processor


def build_tiny_vlm(directory: str | Path, seed: int = 0, size: VlmSize = TINY_VLM) -> Path:
    """Build and save (safetensors) the tiny VLM and its processor in ``directory``."""
    directory = Path(directory)
    model, processor = build_vlm(size, seed)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    return directory


def build_toxicity_classifier(seed: int = 0, tokenizer=None):
    """(model, tokenizer): a random-weight BERT text classifier with labels non-toxic / toxic."""
    # here, not at the top: it imports transformers
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = tokenizer or build_byte_bpe_tokenizer(extra_words=("idiot", "stupid", "hate", "awful"))
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, id2label=dict(TOXICITY_LABELS),
        label2id={v: k for k, v in TOXICITY_LABELS.items()}, problem_type="single_label_classification",
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(config).eval(), tokenizer


def build_tiny_toxicity(directory: str | Path, seed: int = 0) -> Path:
    """Build and save (safetensors) the tiny toxicity classifier and its tokenizer in ``directory``."""
    directory = Path(directory)
    model, tokenizer = build_toxicity_classifier(seed)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def _text_bert(labels: dict[int, str] | None, seed: int):
    """(model, tokenizer): a random-weight BERT, a classifier over ``labels`` or (None) a bare encoder."""
    # here, not at the top: it imports transformers
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    tokenizer = build_byte_bpe_tokenizer(extra_words=("good", "bad", "happy", "sad"))
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        **({"id2label": dict(labels), "label2id": {v: k for k, v in labels.items()},
            "problem_type": "single_label_classification"} if labels else {}),
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config) if labels else BertModel(config)
    return model.eval(), tokenizer


def build_tiny_text_model(directory: str | Path, seed: int = 0, labels: dict[int, str] | None = None) -> Path:
    """Build and save (safetensors) a tiny text classifier over ``labels`` (None: a text encoder) in ``directory``."""
    directory = Path(directory)
    model, tokenizer = _text_bert(labels, seed)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_captioner(directory: str | Path, seed: int = 0) -> Path:
    """A random-weight BLIP captioner (``BlipForConditionalGeneration``, what ``AutoModelForImageTextToText``
    loads for BLIP) with a WordPiece tokenizer made in code, saved in ``directory``. Not part of
    ``cflab models tiny``: the tests use it for the ``captioner`` kind."""

    prefer_pil_image_processors()
    # here, not at the top: transformers loads only when this is called
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    directory = Path(directory)
    chars = [chr(c) for c in range(33, 127)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *(w.lower() for w in _WORDS), *chars, *("##" + c for c in chars)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, bos_token="[DEC]")
    text = BlipTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, bos_token_id=vocab["[DEC]"], pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"],
    )
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    model.save_pretrained(directory, safe_serialization=True)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer).save_pretrained(directory)

    (directory / TINY_MARKER).write_text("Random weights: outputs and metrics mean nothing.\n")
    return directory


_BUILDERS = {
    VLM_NAME: build_tiny_vlm, TOXICITY_NAME: build_tiny_toxicity,
    SENTIMENT_NAME: lambda directory, seed=0: build_tiny_text_model(directory, seed, SENTIMENT_LABELS),
    TEXT_EMBEDDER_NAME: lambda directory, seed=0: build_tiny_text_model(directory, seed, None),
}
# The architecture a built folder's config.json names (a half-written folder is built again).
_ARCHITECTURES = {VLM_NAME: "LlavaForConditionalGeneration", TOXICITY_NAME: "BertForSequenceClassification",
                  SENTIMENT_NAME: "BertForSequenceClassification", TEXT_EMBEDDER_NAME: "BertModel"}


def build_tiny_auditee_models(
    root: str | Path, seed: int = 0, names: tuple[str, ...] = AUDITEE_MODEL_NAMES
) -> dict[str, Path]:
    """Build ``root/vlm``, ``root/toxicity``, ``root/sentiment`` and ``root/text-embedder`` (or those of
    ``names``) unless already built; mark each as random weights."""

    built: dict[str, Path] = {}
    for name in names:
        builder = _BUILDERS[name]
        directory = Path(root) / name
        config = directory / "config.json"
        if not (config.exists() and any(directory.glob("*.safetensors")) and _loads_as(config, name)):
            builder(directory, seed=seed)
            (directory / TINY_MARKER).write_text(
                "Random weights built by `cflab models tiny`: outputs and metrics mean nothing.\n"
            )
        built[name] = directory
    return built


def _loads_as(config_file: Path, name: str) -> bool:
    """Whether an existing folder holds the model ``name`` stands for (not a half-written one)."""
    try:
        architectures = json.loads(config_file.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return _ARCHITECTURES[name] in architectures
