"""CLIP-family embeddings for the judge and the model under audit, loaded once, cached by content.

:class:`ClipEmbedder` wraps any contrastive image-text model that transformers' ``AutoModel``
and ``AutoProcessor`` load and that has ``get_image_features`` / ``get_text_features``
(CLIP, SigLIP, SigLIP 2, ...). Two caches make repeated work free:

* models: one instance per (model, revision, device) per process, so every batch a worker
  runs reuses the loaded weights (:meth:`ClipEmbedder.load`);
* embeddings: an in-process LRU keyed by (image content key or text, model identity), so a
  rerun, or a judge and an audit that share a model, never embed the same image twice.

Embeddings are float32, L2-normalised rows whatever dtype the model runs in (fp16 on CUDA,
fp32 elsewhere).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from counterfactual_lab.errors import UserError
from counterfactual_lab.models.load_once import forget, load_once, on_device
from counterfactual_lab.models.safety import (
    is_local_model,
    refuse_custom_code_config,
    remote_code_refusal,
    safe_load_kwargs,
)

SIGMOID_MODEL_TYPES = ("siglip", "siglip2")
DEFAULT_CACHE_ENTRIES = 100_000


class _LRU:
    """A thread-safe least-recently-used map with a fixed number of entries."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> np.ndarray | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Any, value: np.ndarray) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def resize(self, max_entries: int) -> None:
        with self._lock:
            self.max_entries = max_entries
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)


_EMBEDDINGS = _LRU(DEFAULT_CACHE_ENTRIES)
EMBEDDER_KIND = "clip-embedder"  # load_once's kind


def embedding_cache() -> _LRU:
    """The process-wide embedding cache (its ``hits``/``misses`` counters feed the manifest)."""
    return _EMBEDDINGS


def set_embedding_cache_size(max_entries: int) -> None:
    """Bound the embedding cache (entries, each one d-dimensional float32 row)."""
    if max_entries < 0:
        raise ValueError(f"cache size must be >= 0, got {max_entries}")
    _EMBEDDINGS.resize(max_entries)


# The most entries reserve_embedding_cache grows the cache to (a CLIP-L row is 3 KiB: ~3 GiB).
MAX_RESERVED_CACHE_ENTRIES = 1_000_000


def reserve_embedding_cache(entries: int) -> int:
    """Grow the embedding cache (never shrink it) to hold ``entries`` rows, at most
    :data:`MAX_RESERVED_CACHE_ENTRIES`; returns its size.

    A run asks for room for every image and caption it embeds before the judge runs, so the
    model under audit finds the judge's embeddings instead of an LRU that cycled past them: at
    10⁵ work items a fixed 100,000-entry cache re-embedded every image in evaluation (175 s
    where 10⁴ items took 3 s; bench/scale.py).
    """
    wanted = min(max(int(entries), 0), MAX_RESERVED_CACHE_ENTRIES)
    if wanted > _EMBEDDINGS.max_entries:
        _EMBEDDINGS.resize(wanted)
    return _EMBEDDINGS.max_entries


def clear_caches() -> None:
    """Forget every loaded model and cached embedding in this process."""
    forget(EMBEDDER_KIND)
    _EMBEDDINGS.clear()


def image_content_key(image) -> str:
    """sha256 of an image's mode, size and pixels: the cache key when the caller gives none."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def is_remote_uri(uri: str) -> bool:
    """True for an object-store or web URI (``s3://``, ``gs://``, ``https://``), False for a local file."""
    return "://" in uri and not uri.startswith("file://")


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def loader_threads(uris: Sequence[str], device: str, load_workers: int = 4, *,
                   cores: int | None = None, model_threads: int | None = None) -> int:
    """How many threads should load ``uris`` while the model runs; 0 means the calling thread.

    Remote URIs wait on the network, not a core: ``load_workers``. Decoding a local file is CPU
    work, so it only gets the cores the model leaves free: ``cores`` (default
    :func:`usable_cores`) minus the model's threads (torch's intra-op threads on the CPU, the
    one thread that feeds an accelerator otherwise), at most ``load_workers``. On a 2-core
    machine running the model on both, threads only preempt the model and the processor:
    ``bench/evaluate.py`` measured the image stage at ~1.2 s with 4 loader threads against
    ~0.8 s in the calling thread.
    """
    if any(is_remote_uri(uri) for uri in uris):
        return max(1, load_workers)
    if model_threads is None:
        # here, not at the top: `import counterfactual_lab.models.clip` (the CLI's path) loads no torch
        import torch

        model_threads = torch.get_num_threads() if device == "cpu" else 1
    spare = (usable_cores() if cores is None else cores) - model_threads
    return max(0, min(load_workers, spare))


def _model_identity(model: str, revision: str | None) -> str:
    """What names these weights: the hub id and revision, or a local folder and its weight files."""
    if not is_local_model(model):
        return f"{model}@{revision or 'main'}"
    root = Path(model).expanduser().resolve()
    stamp = hashlib.sha256()
    for path in sorted(root.rglob("*.safetensors")):
        stat = path.stat()
        stamp.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{root}#{stamp.hexdigest()[:16]}"


def _features(output: Any):
    """The projected embedding from ``get_*_features``: a tensor (transformers 4) or, in
    transformers 5, a model output whose ``pooler_output`` holds the projection."""
    # here, not at the top: it imports torch
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        return pooled
    if isinstance(output, tuple) and len(output) > 1:
        return output[1]
    raise TypeError(f"cannot find embeddings in a {type(output).__name__} returned by the model")


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class ClipEmbedder:
    """A loaded CLIP-family model with batched, cached, normalised image and text embeddings."""

    def __init__(self, model: Any, processor: Any, *, name: str, revision: str | None, device: str) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.revision = revision
        self.device = device
        self.identity = _model_identity(name, revision)
        self.model_type = getattr(model.config, "model_type", "")
        self.is_sigmoid = self.model_type in SIGMOID_MODEL_TYPES
        self._dtype = next(model.parameters()).dtype

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def load(cls, model: str, revision: str | None = None, device: str = "auto") -> "ClipEmbedder":
        """Load ``model`` (hub id or local folder) once per process; later calls return the same instance."""
        # here, not at the top: it imports torch
        from counterfactual_lab.models.devices import resolve_device

        device = str(resolve_device(device))
        return load_once(EMBEDDER_KIND, model, revision, device, lambda: cls._from_pretrained(model, revision, device))

    @classmethod
    def _from_pretrained(cls, model: str, revision: str | None, device: str) -> "ClipEmbedder":
        # here, not at the top: it imports transformers
        from transformers import AutoModel, AutoProcessor

        # here, not at the top: it imports transformers
        from transformers.utils import logging as transformers_logging

        # here, not at the top: it imports torch
        from counterfactual_lab.models.devices import dtype_for

        transformers_logging.disable_progress_bar()  # one line per worker load is noise in a pipeline log
        kwargs = safe_load_kwargs(model, revision)
        dtype = dtype_for(device)
        try:
            network = AutoModel.from_pretrained(model, dtype=dtype, **kwargs)
            refuse_custom_code_config(model, network.config)
            processor_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "trust_remote_code")}
            processor = AutoProcessor.from_pretrained(model, **processor_kwargs)
        except ValueError as exc:
            refusal = remote_code_refusal(model, exc)
            if refusal is None:
                raise
            raise refusal from None
        except OSError as exc:
            raise UserError(
                f"cannot load the CLIP-family model {model!r} (revision {revision!r}): {exc}. "
                "Give a local folder written by save_pretrained or a hub id reachable from here."
            ) from None
        for method in ("get_image_features", "get_text_features"):
            if not hasattr(network, method):
                raise UserError(
                    f"model {model!r} ({type(network).__name__}) has no {method}; "
                    "the judge and the audit need a contrastive image-text model such as CLIP or SigLIP"
                )
        return cls(on_device(network, model, revision, device), processor, name=model, revision=revision, device=device)

    # -- similarity scale --------------------------------------------------------------
    @property
    def logit_scale(self) -> float:
        """The multiplier applied to cosine similarities (``exp`` of the learned log-scale)."""
        scale = getattr(self.model, "logit_scale", None)
        return 100.0 if scale is None else float(scale.detach().float().exp().item())

    @property
    def logit_bias(self) -> float:
        """SigLIP's learned bias (0 for CLIP, whose softmax makes a bias irrelevant)."""
        bias = getattr(self.model, "logit_bias", None)
        return 0.0 if bias is None else float(bias.detach().float().item())

    def zero_shot(self, image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        """Label probabilities, one row per image, one column per text prompt.

        CLIP: ``softmax(s · cos(I, T))`` over the labels (rows sum to 1). SigLIP:
        ``sigmoid(s · cos(I, T) + b)`` per label, the model's own independent probability of
        each label (rows need not sum to 1). ``s`` is :attr:`logit_scale`, ``b`` :attr:`logit_bias`.
        """
        logits = np.atleast_2d(image_emb).astype(np.float64) @ np.atleast_2d(text_emb).astype(np.float64).T
        logits = logits * self.logit_scale
        if self.is_sigmoid:
            return 1.0 / (1.0 + np.exp(-(logits + self.logit_bias)))
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    # -- embeddings --------------------------------------------------------------------
    def embed_images(self, images: Sequence[Any], keys: Sequence[str] | None = None, batch_size: int = 32) -> np.ndarray:
        """(n, d) normalised embeddings of PIL images; cached by ``keys`` (default: a pixel hash)."""
        if keys is None:
            keys = [image_content_key(image) for image in images]
        if len(keys) != len(images):
            raise ValueError(f"embed_images got {len(images)} images but {len(keys)} keys")
        return self._embed_cached("image", list(keys), lambda idx: self._image_features([images[i] for i in idx], batch_size))

    def embed_image_uris(
        self,
        uris: Sequence[str],
        keys: Sequence[str],
        load_image: Callable[[str], Any],
        batch_size: int = 32,
        load_workers: int = 4,
    ) -> np.ndarray:
        """Like :meth:`embed_images`, but only images missing from the cache are loaded.

        ``load_image(uri)`` returns a PIL image. Loads run on :func:`loader_threads` threads, a
        chunk ahead of the batches in the model, or in the calling thread, one batch at a time,
        when that is 0: local files on a machine whose cores the model already uses.
        """
        if len(keys) != len(uris):
            raise ValueError(f"embed_image_uris got {len(uris)} URIs but {len(keys)} keys")

        def compute(missing: list[int]) -> np.ndarray:
            wanted = [uris[i] for i in missing]
            workers = loader_threads(wanted, self.device, load_workers)
            if workers:
                parts = self._embed_prefetched(wanted, load_image, batch_size, workers)
            else:
                step = max(batch_size, 1)
                parts = [
                    self._image_features([load_image(uri) for uri in wanted[start : start + step]], batch_size)
                    for start in range(0, len(wanted), step)
                ]
            return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

        return self._embed_cached("image", list(keys), compute)

    def _embed_prefetched(
        self, uris: list[str], load_image: Callable[[str], Any], batch_size: int, load_workers: int
    ) -> list[np.ndarray]:
        """Embed images whose loads run on ``load_workers`` threads while the previous chunk is in the model."""
        chunk = max(batch_size * 4, 1)
        parts = []
        with ThreadPoolExecutor(max_workers=max(1, load_workers)) as pool:
            pending = None
            for start in range(0, len(uris), chunk):
                future = pool.map(load_image, uris[start : start + chunk])
                if pending is not None:
                    parts.append(self._image_features(list(pending), batch_size))
                pending = future
            if pending is not None:
                parts.append(self._image_features(list(pending), batch_size))
        return parts

    def embed_texts(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(n, d) normalised text embeddings, cached by the text itself."""
        texts = list(texts)
        return self._embed_cached("text", texts, lambda idx: self._text_features([texts[i] for i in idx], batch_size))

    def _embed_cached(self, kind: str, keys: list[str], compute: Callable[[list[int]], np.ndarray]) -> np.ndarray:
        rows: list[np.ndarray | None] = [_EMBEDDINGS.get((kind, key, self.identity)) for key in keys]
        missing: list[int] = []
        first_of: dict[str, int] = {}
        for i, (key, row) in enumerate(zip(keys, rows)):
            if row is None and key not in first_of:
                first_of[key] = i
                missing.append(i)
        if missing:
            fresh = compute(missing)
            for i, vector in zip(missing, fresh):
                _EMBEDDINGS.put((kind, keys[i], self.identity), vector)
            computed = {keys[i]: vector for i, vector in zip(missing, fresh)}
            rows = [computed[k] if row is None else row for k, row in zip(keys, rows)]
        if not rows:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack(rows)

    @property
    def dimension(self) -> int:
        config = self.model.config
        return int(getattr(config, "projection_dim", None) or config.text_config.hidden_size)

    def _image_features(self, images: list[Any], batch_size: int) -> np.ndarray:
        # here, not at the top: it imports torch
        import torch

        out = []
        for start in range(0, len(images), batch_size):
            batch = [im if im.mode == "RGB" else im.convert("RGB") for im in images[start : start + batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, dtype=self._dtype)
            with torch.inference_mode():
                features = _features(self.model.get_image_features(pixel_values=pixels))
            out.append(features.float().cpu().numpy())
        return _normalise(np.concatenate(out)).astype(np.float32)

    def _text_features(self, texts: list[str], batch_size: int) -> np.ndarray:
        # here, not at the top: it imports torch
        import torch

        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if self.is_sigmoid:
            # SigLIP was trained on max-length padded text; shorter padding changes its embeddings.
            max_length = getattr(self.model.config.text_config, "max_position_embeddings", 64)
            padding: dict[str, Any] = {"padding": "max_length", "max_length": max_length}
        else:
            padding = {"padding": True}
        out = []
        for start in range(0, len(texts), batch_size):
            inputs = tokenizer(texts[start : start + batch_size], truncation=True, return_tensors="pt", **padding)
            # SigLIP's reference usage passes no attention mask (it pools the last position).
            wanted = ("input_ids",) if self.is_sigmoid else ("input_ids", "attention_mask")
            inputs = {k: v.to(self.device) for k, v in inputs.items() if k in wanted}
            with torch.inference_mode():
                features = _features(self.model.get_text_features(**inputs))
            out.append(features.float().cpu().numpy())
        return _normalise(np.concatenate(out)).astype(np.float32)
