"""Generate one batch of work items into the content-addressed image store.

This is what a generation task runs (one task per batch, never one per image). Its contract:

* a content key already in the store is never generated again: it is reported ``cached``
  without loading or calling any model;
* a CUDA out-of-memory error halves the sub-batch and goes on (``oom_halvings`` records how
  often it had halved when an item was made); the smaller size holds for the rest of the batch;
* an item that still fails on its own (an unreadable source, OOM at batch size 1, any error
  it alone triggers) is recorded ``failed`` with its error, and the others go on; after any
  other error on a sub-batch its items are retried one by one, so a poisoned item fails alone;
* configuration errors (:class:`UserError`) and storage errors are raised, not recorded: the
  first would fail every item the same way, the second is worth a task retry (items already
  stored are then cache hits);
* an editor may return an exception in place of one item's image (an inpainting mask with no
  pixel set): that item is recorded ``failed`` with it, the others are stored.

What an editor reads: the source image of each item, unless the method makes images from text
alone (its row says ``reads_source=False``: the editor gets None); the item's mask too when the editor
``reads_masks`` (``edit(items, sources, masks)``). An editor with ``batch_group(item)`` has the
items of one group (the members of a text-to-image set) packed into the same call where the
batch size allows.
"""

from __future__ import annotations

import gc
import io
import logging
import time
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from counterfactual_lab.config.methods import method_facts
from counterfactual_lab.errors import UserError
from counterfactual_lab.generation.editor import ImageEditor, make_editor
from counterfactual_lab.generation.records import (
    CACHED,
    FAILED,
    GENERATED,
    GenerationRecord,
)
from counterfactual_lab.plan.work_items import WorkItem, pack
from counterfactual_lab.storage.files import is_transient
from counterfactual_lab.storage.regular_files import read_regular_file

if TYPE_CHECKING:  # imported lazily: storage needs fsspec, config needs pydantic (GPU benches lack both)
    from counterfactual_lab.config.audit_config import GenerationSection
    from counterfactual_lab.storage.files import ImageStore

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500


def is_out_of_memory(exc: BaseException) -> bool:
    """True for accelerator out-of-memory errors (CUDA's own class, or the RuntimeError text)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _free_accelerator_memory() -> None:
    # The failed call's tensors may still be referenced from the traceback's frames.
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def load_source(item: WorkItem, store: ImageStore) -> Image.Image:
    """The item's source image (RGB), read from ``item.source_image_uri``."""
    uri = item.source_image_uri
    if uri == store.uri(item.source_key):
        return store.get(item.source_key)
    # here, not at the top: a GPU bench box may lack pydantic
    from counterfactual_lab.config.dataset_spec import MAX_IMAGE_BYTES

    if "://" not in uri:  # a local path: a regular file only (a FIFO there would block the batch)
        data, size = read_regular_file(uri, MAX_IMAGE_BYTES)
        if data is None:
            raise ValueError(f"{uri} has {size:,} bytes, over the {MAX_IMAGE_BYTES:,}-byte image limit")
    else:
        # here, not at the top: a GPU bench box may lack fsspec
        from counterfactual_lab.storage.files import read_bytes

        data = read_bytes(uri, store.storage_options, max_bytes=MAX_IMAGE_BYTES, what="a source image")
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _is_transient(exc: BaseException) -> bool:

    return is_transient(exc)


def generate_batch(
    items: list[WorkItem],
    generation: GenerationSection,
    store: ImageStore,
    *,
    device: str = "auto",
    editor: ImageEditor | None = None,
) -> list[GenerationRecord]:
    """Make (or find) the counterfactual image of every item; one record per item, in order.

    Results are PNGs at ``store.uri(item.content_key)``. See the module docstring for what
    is cached, retried, halved, failed or raised.
    """
    unique: dict[str, WorkItem] = {}
    for item in items:
        unique.setdefault(item.content_key, item)
    records: dict[str, GenerationRecord] = {}
    for key in store.existing(list(unique)):
        records[key] = GenerationRecord(key, store.uri(key), CACHED)
    pending = [item for key, item in unique.items() if key not in records]
    if pending:
        ready: list[_Ready] = []
        sources: dict[str, Image.Image] = {}
        masks: dict[str, Image.Image] = {}
        reads_source = method_facts(generation.method).reads_source
        for item in pending:
            try:
                if reads_source and item.source_image_uri not in sources:
                    sources[item.source_image_uri] = load_source(item, store)
            except Exception as exc:
                if _is_transient(exc):
                    raise
                records[item.content_key] = GenerationRecord(
                    item.content_key, None, FAILED,
                    error=f"source image {item.source_image_uri} unreadable: {_describe(exc)}",
                )
                continue
            try:
                if item.mask_uri is not None and item.mask_uri not in masks:
                    masks[item.mask_uri] = store.load(item.mask_uri)
            except Exception as exc:
                if _is_transient(exc):
                    raise
                records[item.content_key] = GenerationRecord(
                    item.content_key, None, FAILED, error=f"mask {item.mask_uri} unreadable: {_describe(exc)}",
                )
                continue
            ready.append((item, sources.get(item.source_image_uri) if reads_source else None,
                          None if item.mask_uri is None else masks[item.mask_uri]))
        if ready:
            editor = editor or make_editor(generation, device)
            records.update(_run_all(ready, generation.batch_size, editor, store))
    return [records[item.content_key] for item in items]


# (item, its source image or None, its mask or None)
_Ready = tuple[WorkItem, Any, Any]


def _edit(editor: ImageEditor, part: list[_Ready]) -> list[Any]:
    items, sources = [item for item, _, _ in part], [source for _, source, _ in part]
    if getattr(editor, "reads_masks", False):
        return editor.edit(items, sources, [mask for _, _, mask in part])  # type: ignore[call-arg]
    return editor.edit(items, sources)


def _run_all(ready: list[_Ready], batch_size: int, editor: ImageEditor, store: ImageStore) -> dict[str, GenerationRecord]:
    records: dict[str, GenerationRecord] = {}
    state = {"size": max(1, min(batch_size, len(ready))), "halvings": 0}
    group = getattr(editor, "batch_group", None)
    group_of = None if group is None else (lambda entry: group(entry[0]))

    def fail(item: WorkItem, exc: BaseException) -> None:
        log.warning("work item %s failed: %s", item.content_key, _describe(exc))
        records[item.content_key] = GenerationRecord(
            item.content_key, None, FAILED, error=_describe(exc), oom_halvings=state["halvings"]
        )

    def run_in_parts(items: list[_Ready]) -> None:
        # The part size is re-read each time: a halving holds for everything after it.
        remaining = list(items)
        while remaining:
            part = pack(remaining, state["size"], group_of)[0]
            taken = {id(entry) for entry in part}
            remaining = [entry for entry in remaining if id(entry) not in taken]
            run(part)

    def run(part: list[_Ready]) -> None:
        started = time.perf_counter()
        try:
            images = _edit(editor, part)
            if len(images) != len(part):
                raise RuntimeError(f"editor returned {len(images)} images for {len(part)} items")
        except UserError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                _free_accelerator_memory()
                if len(part) == 1:
                    fail(part[0][0], exc)
                    return
                state["halvings"] += 1
                state["size"] = max(1, min(state["size"], len(part) // 2))
                log.warning("out of memory on %d items; halving the batch to %d", len(part), state["size"])
                run_in_parts(part)
                return
            if len(part) == 1:
                fail(part[0][0], exc)
                return
            # Some item poisons the batch: run them alone so only it fails.
            for single in part:
                run([single])
            return
        seconds = (time.perf_counter() - started) / len(part)
        for (item, _, _), image in zip(part, images):
            if isinstance(image, BaseException):  # the editor could not make this item alone
                fail(item, image)
                continue
            uri = store.put_png(item.content_key, image)
            records[item.content_key] = GenerationRecord(
                item.content_key, uri, GENERATED, oom_halvings=state["halvings"], seconds=seconds
            )

    run_in_parts(ready)
    return records
