"""Every answer and score of a model under audit, cached in the output store in shards.

Generations are the most expensive step of a generative audit, so nothing the model has answered
is ever asked again: not by a rerun, a resumed run, another run under the same output root, or a
worker on another machine. Answers are stored **one shard per batch** (an evaluate task's images),
not one object per answer: the NAACL 2025 audit's 57 M answers would otherwise be 57 M objects
(on S3, 57 M PUTs before any GET)::

    OUT/_auditee_cache/v2/shards/<shard id>.json   the answers of one batch of images
    OUT/_auditee_cache/v2/index/<segment>.json     which images each shard answers about

A **shard** is ``{"format": "cflab-auditee-shard", "version": 2, "subjects": [image content
keys], "entries": [{"key", "probe", "fields", "value"}, ...], "checksum": "sha256:..."}``. Each
entry's ``key`` is the sha256 of the canonical JSON of ``fields``: the probe kind, the image
content key (or, for a score of a text, the text's sha256), the prompt, the model's identity and
revision, the dtype, and the decoding parameters (:func:`answer_key`), so every entry says what it
answers. A shard's id is the sha256 of its entry keys: the same request writes the same name, so two
machines racing on one batch write one object. A batch holding more than :data:`SHARD_MAX_ENTRIES`
answers writes a shard each time that many are pending, so a crash loses at most that much.

An **index segment** (``{"format": "cflab-auditee-index", "shards": {id: [subjects]}, "checksum"}``)
maps shards to the images they answer about. The audit flow reads the index once
(:meth:`AnswerCache.read_index`), gives each evaluate task the shards covering its images, and
writes one segment for the shards the run wrote (:meth:`AnswerCache.write_index`); past
:data:`COMPACT_SEGMENTS` segments they are merged. A shard a crash left out of the index (written,
then the run died before its segment) is found by listing ``shards/``: nothing is asked twice.

**Trust.** A shard is used only when it is exactly what this module writes: JSON within
:data:`SHARD_MAX_BYTES` read through the bounded reader (a FIFO or a device is never opened), its
checksum matches its content, every entry's key is the hash of its fields, and every value is in
range for its probe (:func:`value_problem`: probabilities in [0, 1], a log-likelihood finite and
not positive, a generated text a string within ``max_new_tokens`` tokens). Anything else (an edited
value, a truncated write, a planted pickle) refuses the **whole shard** with one warning naming it;
its answers are computed again and written to a new shard. A checksum stops edits by anyone who
does not recompute it; someone who can write the store and recompute sha256 can still change
answers (a keyed MAC with a key outside the store would stop that too).

Writes are atomic: locally a temp file renamed into place, on S3 one PUT. Objects written are
counted (:attr:`CallCounts.objects_written`), for ``bench/scale.py --auditee vlm``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from counterfactual_lab.storage.files import filesystem, join, read_bytes, write_bytes_atomic
from counterfactual_lab.storage.json_files import DamagedJson, parse_json
from counterfactual_lab.storage.regular_files import UnreadableFile

CACHE_FOLDER = "_auditee_cache"
LAYOUT = "v2"
SHARD_FORMAT = "cflab-auditee-shard"
INDEX_FORMAT = "cflab-auditee-index"
FORMAT_VERSION = 2
# Pending answers that make a shard on their own (a batch larger than this writes several).
SHARD_MAX_ENTRIES = 50_000
SHARD_MAX_BYTES = 256 * 2**20
INDEX_MAX_BYTES = 512 * 2**20
# More index segments than this are merged into one by the next index write.
COMPACT_SEGMENTS = 32
READ_THREADS = 8
# The longest text embedding a shard may hold (a sentence embedder's width is a few thousand at most).
MAX_EMBEDDING_WIDTH = 65_536

logger = logging.getLogger(__name__)


def answer_key(fields: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``fields`` (sorted keys, no whitespace)."""
    return hashlib.sha256(_canonical(fields)).hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _checksum(document: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_canonical({k: v for k, v in document.items() if k != "checksum"})).hexdigest()


@dataclass
class CallCounts:
    """Answers computed by a model in this run, answers served from the cache, and cache objects written."""

    computed: int = 0
    cached: int = 0
    objects_written: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, computed: int = 0, cached: int = 0, objects_written: int = 0) -> None:
        with self._lock:
            self.computed += computed
            self.cached += cached
            self.objects_written += objects_written

    def as_dict(self) -> dict[str, int]:
        return {"computed": self.computed, "cached": self.cached, "objects_written": self.objects_written}


# -- what a value may be ---------------------------------------------------------------------------

def _probability(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and 0.0 <= x <= 1.0


def value_problem(probe: str, fields: Mapping[str, Any], value: Any) -> str | None:
    """Why ``value`` cannot be an answer of ``probe`` (None when it can). Probes of
    :mod:`.probes`: ``choice`` {loglik: finite, ≤ 0}; ``yes_no``/``rating`` {sums: next-token
    probability masses, each in [0, 1], summing to at most 1}; ``generation`` {text: a string
    (a model may write any character), tokens: 0…max_new_tokens}; ``toxicity`` {toxicity: in [0, 1]};
    ``sentiment`` {sentiment: P(positive) − P(negative), in [−1, 1]}; ``text_embedding``
    {text_embedding: a unit vector, 1…:data:`MAX_EMBEDDING_WIDTH` finite numbers each in [−1, 1]}."""
    if not isinstance(value, dict):
        return "the value is not an object"
    if probe == "choice":
        loglik = value.get("loglik")
        ok = set(value) == {"loglik"} and isinstance(loglik, int | float) and not isinstance(loglik, bool) \
            and math.isfinite(loglik) and loglik <= 1e-6
        return None if ok else f"log-likelihood {loglik!r} is not a finite number ≤ 0"
    if probe in ("yes_no", "rating"):
        sums = value.get("sums")
        ok = set(value) == {"sums"} and isinstance(sums, list) and sums and all(_probability(s) for s in sums) \
            and sum(sums) <= 1.0 + 1e-6
        return None if ok else f"probabilities {sums!r} are not each in [0, 1] with a sum of at most 1"
    if probe == "generation":
        text, tokens = value.get("text"), value.get("tokens")
        limit = fields.get("max_new_tokens")
        ok = set(value) == {"text", "tokens"} and isinstance(text, str) \
            and isinstance(tokens, int) and not isinstance(tokens, bool) and 0 <= tokens \
            and (not isinstance(limit, int) or tokens <= limit)
        return None if ok else f"generation (tokens {tokens!r}) is not a text of at most {limit} tokens"
    if probe == "toxicity":
        score = value.get("toxicity")
        return None if set(value) == {"toxicity"} and _probability(score) else f"toxicity {score!r} is not in [0, 1]"
    if probe == "sentiment":
        score = value.get("sentiment")
        ok = set(value) == {"sentiment"} and isinstance(score, int | float) and not isinstance(score, bool) \
            and math.isfinite(score) and -1.0 - 1e-6 <= score <= 1.0 + 1e-6
        return None if ok else f"sentiment {score!r} is not in [-1, 1]"
    if probe == "text_embedding":
        vector = value.get("text_embedding")
        ok = set(value) == {"text_embedding"} and isinstance(vector, list) and 0 < len(vector) <= MAX_EMBEDDING_WIDTH \
            and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and abs(x) <= 1.0 + 1e-6
                    for x in vector)
        width = len(vector) if isinstance(vector, list) else None
        return None if ok else f"text embedding (width {width}) is not 1…{MAX_EMBEDDING_WIDTH} numbers in [-1, 1]"
    return f"unknown probe {probe!r}"


# -- the index -------------------------------------------------------------------------------------

@dataclass
class CacheIndex:
    """Shard id → the image content keys (subjects) it answers about; ``segments``: the index
    objects read; ``unindexed``: shards found by listing that no segment names (a crash's)."""

    shards: dict[str, tuple[str, ...]] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)
    unindexed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _inverted: dict[str, set[str]] | None = field(default=None, repr=False, compare=False)

    def shards_for(self, subjects: Iterable[str]) -> list[str]:
        """The ids of the shards holding answers about any of ``subjects``, sorted."""
        wanted = set(subjects)
        by_subject = self._by_subject()
        return sorted({shard for subject in wanted for shard in by_subject.get(subject, ())})

    def _by_subject(self) -> dict[str, set[str]]:
        if self._inverted is None:
            inverted: dict[str, set[str]] = {}
            for shard, subjects in {**self.shards, **self.unindexed}.items():
                for subject in subjects:
                    inverted.setdefault(subject, set()).add(shard)
            self._inverted = inverted
        return self._inverted


class AnswerCache:
    """The answer shards under ``root_uri`` (an output root, local or ``s3://``); see the module doc.

    One object is one batch's view: ``subjects`` are the image content keys it asks about (the
    shard it writes is indexed under them), ``shards`` the ids of the shards that may hold its
    answers (the flow's index lookup; None: looked up in the index by this object, or every shard
    when no subjects are given). :meth:`view` makes another batch's view on the same store.
    Answers are read on the first :meth:`get_many`, written by :meth:`flush`.
    """

    def __init__(self, root_uri: str, storage_options: dict[str, Any] | None = None, *,
                 subjects: Sequence[str] | None = None, shards: Sequence[str] | None = None,
                 counts: CallCounts | None = None) -> None:
        self.output_root = root_uri
        self.root_uri = join(root_uri, CACHE_FOLDER, LAYOUT)
        self.storage_options = dict(storage_options or {})
        self.subjects = list(subjects) if subjects is not None else None
        self.shards = list(shards) if shards is not None else None
        self.counts = counts if counts is not None else CallCounts()
        self.written: dict[str, list[str]] = {}  # shard id -> subjects, of the shards this view wrote
        self._answers: dict[str, tuple[str, dict[str, Any]]] | None = None  # key -> (probe, value)
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def view(self, *, subjects: Sequence[str] | None = None, shards: Sequence[str] | None = None,
             counts: CallCounts | None = None) -> AnswerCache:
        """Another batch's view on the same store."""
        return AnswerCache(self.output_root, self.storage_options, subjects=subjects, shards=shards, counts=counts)

    def shard_uri(self, shard_id: str) -> str:
        return join(self.root_uri, "shards", f"{shard_id}.json")

    # -- answers ---------------------------------------------------------------------------------

    def get_many(self, probe: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """key → stored value, for the ``keys`` of ``probe`` present in trusted shards."""
        answers = self._loaded()
        found = {}
        for key in dict.fromkeys(keys):
            entry = answers.get(key)
            if entry is not None and entry[0] == probe:
                found[key] = entry[1]
        return found

    def put_many(self, probe: str, entries: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]]) -> None:
        """Keep ``key → (fields, value)`` entries for the next :meth:`flush` (``value``: a JSON object
        of plain data); past :data:`SHARD_MAX_ENTRIES` pending, a shard is written at once."""
        with self._lock:
            for key, (fields, value) in entries.items():
                self._pending[key] = {"key": key, "probe": probe, "fields": dict(fields), "value": dict(value)}
                if self._answers is not None:
                    self._answers[key] = (probe, dict(value))
            full = len(self._pending) >= SHARD_MAX_ENTRIES
        if full:
            self.flush()

    def flush(self) -> str | None:
        """Write the pending answers as one shard (atomically); returns its id, None when none pending."""
        with self._lock:
            entries, self._pending = sorted(self._pending.values(), key=lambda e: e["key"]), {}
        if not entries:
            return None
        subjects = sorted(self.subjects if self.subjects is not None else
                          {str(e["fields"].get("content_key") or e["fields"].get("text_sha256")) for e in entries})
        shard_id = hashlib.sha256("\n".join(e["key"] for e in entries).encode()).hexdigest()
        document = {"format": SHARD_FORMAT, "version": FORMAT_VERSION, "subjects": subjects, "entries": entries}
        document["checksum"] = _checksum(document)
        write_bytes_atomic(self.shard_uri(shard_id), _canonical(document), self.storage_options)
        self.counts.add(objects_written=1)
        self.written[shard_id] = subjects
        return shard_id

    def _loaded(self) -> dict[str, tuple[str, dict[str, Any]]]:
        with self._lock:
            if self._answers is not None:
                return self._answers
        if self.shards is not None:
            shard_ids = list(self.shards)
        else:
            index = self.read_index()
            shard_ids = index.shards_for(self.subjects) if self.subjects is not None else \
                sorted({*index.shards, *index.unindexed})
        answers: dict[str, tuple[str, dict[str, Any]]] = {}
        for document in self._read_shards(shard_ids).values():
            for entry in document["entries"]:
                answers[entry["key"]] = (entry["probe"], entry["value"])
        with self._lock:
            if self._answers is None:
                self._answers = answers
            return self._answers

    def _read_shards(self, shard_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """id → document of the trusted shards among ``shard_ids`` (read on a few threads)."""
        if not shard_ids:
            return {}
        with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(shard_ids))) as pool:
            return {i: d for i, d in zip(shard_ids, pool.map(self._read_shard, shard_ids)) if d is not None}

    def _read_shard(self, shard_id: str) -> dict[str, Any] | None:
        """The shard's document when it is trusted (module doc); None, with a warning, otherwise."""
        uri = self.shard_uri(shard_id)
        try:
            data = read_bytes(uri, self.storage_options, max_bytes=SHARD_MAX_BYTES, what="an answer shard")
        except FileNotFoundError:
            return None  # named by an index, removed since: its answers are computed again
        except UnreadableFile as exc:
            logger.warning("auditee cache shard %s refused (%s); its answers are computed again", uri, exc)
            return None
        document, problem = verified_shard(data, shard_id)
        if problem is not None:
            logger.warning("auditee cache shard %s refused: %s; its answers are computed again", uri, problem)
            return None
        return document

    # -- the index -------------------------------------------------------------------------------

    def read_index(self) -> CacheIndex:
        """Every index segment, plus the shards no segment names (found by listing ``shards/``)."""
        index = CacheIndex()
        for name in self._names("index"):
            uri = join(self.root_uri, "index", name)
            try:
                data = read_bytes(uri, self.storage_options, max_bytes=INDEX_MAX_BYTES, what="an answer-cache index")
                document = parse_json(data, uri)
                if not (isinstance(document, dict) and document.get("format") == INDEX_FORMAT
                        and document.get("checksum") == _checksum(document) and isinstance(document.get("shards"), dict)):
                    raise DamagedJson(f"{uri} is not an index this project wrote (or was edited)")
            except FileNotFoundError:
                continue  # merged and removed meanwhile
            except (UnreadableFile, DamagedJson) as exc:
                logger.warning("auditee cache index %s refused (%s); its shards are found by listing", uri, exc)
                continue
            index.segments.append(uri)
            for shard, subjects in document["shards"].items():
                if isinstance(subjects, list):
                    index.shards[str(shard)] = tuple(str(s) for s in subjects)
        unindexed = [n.removesuffix(".json") for n in self._names("shards") if n.removesuffix(".json") not in index.shards]
        for shard, document in self._read_shards(unindexed).items():
            index.unindexed[shard] = tuple(document["subjects"])
        return index

    def write_index(self, shards: Mapping[str, Sequence[str]], index: CacheIndex | None = None) -> None:
        """One index segment for ``shards`` (id → subjects), plus the shards ``index`` found unindexed;
        when ``index`` already has :data:`COMPACT_SEGMENTS` segments, one merged segment replaces them."""
        merged = {**(index.unindexed if index else {}), **{k: tuple(v) for k, v in shards.items()}}
        replaced: list[str] = []
        if index is not None and len(index.segments) >= COMPACT_SEGMENTS:
            merged = {**index.shards, **merged}
            replaced = list(index.segments)
        if not merged:
            return
        document = {"format": INDEX_FORMAT, "version": FORMAT_VERSION,
                    "shards": {k: sorted(v) for k, v in sorted(merged.items())}}
        document["checksum"] = _checksum(document)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        write_bytes_atomic(join(self.root_uri, "index", name), _canonical(document), self.storage_options)
        self.counts.add(objects_written=1)
        if replaced:
            fs, _ = filesystem(self.root_uri, self.storage_options)
            for uri in replaced:
                try:
                    fs.rm_file(filesystem(uri, self.storage_options)[1])
                except FileNotFoundError:
                    pass

    def _names(self, folder: str) -> list[str]:
        fs, path = filesystem(join(self.root_uri, folder), self.storage_options)
        try:
            names = fs.ls(path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in names if n.endswith(".json"))


def verified_shard(data: bytes, shard_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(document, None)`` when ``data`` is the trusted shard ``shard_id`` (module doc), else
    ``(None, why not)``."""
    if not data.startswith(b"{"):
        return None, "not a JSON object (a pickle starts with b'\\x80'; never parsed further)"
    try:
        document = parse_json(data, "the shard")
    except DamagedJson as exc:
        return None, str(exc)
    if not isinstance(document, dict) or document.get("format") != SHARD_FORMAT \
            or document.get("version") != FORMAT_VERSION or set(document) != {"format", "version", "subjects", "entries", "checksum"}:
        return None, "not an answer shard this project wrote"
    if document["checksum"] != _checksum(document):
        return None, "its content does not match its checksum (edited after it was written)"
    entries, subjects = document["entries"], document["subjects"]
    if not isinstance(entries, list) or not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects):
        return None, "not an answer shard this project wrote"
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"key", "probe", "fields", "value"} \
                or not isinstance(entry["fields"], dict) or entry["fields"].get("probe") != entry["probe"]:
            return None, "an entry is not an answer this project wrote"
        if answer_key(entry["fields"]) != entry["key"]:
            return None, f"entry {str(entry['key'])[:16]}… is not the hash of its fields"
        problem = value_problem(entry["probe"], entry["fields"], entry["value"])
        if problem is not None:
            return None, f"entry {entry['key'][:16]}…: {problem}"
        keys.append(entry["key"])
    if hashlib.sha256("\n".join(keys).encode()).hexdigest() != shard_id:
        return None, "its name is not the hash of its entries (a shard copied under another name)"
    return document, None
