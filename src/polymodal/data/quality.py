"""Data quality: score image-text pairs, filter them, find duplicates and test leaks, and inject
known noise so that every detector's precision and recall can be measured
(`polymodal data score|filter|dedup|corrupt`; docs/data-quality.md).

- `score(spec, model)`: per record, simple checks (image decodes, size, aspect ratio, caption
  length, language, empty or duplicate text) and, given a model, the cosine between its image
  and its caption(s) in a dual encoder's space and, when the model has an ITM head, the matching
  probability. The model is anything with `embed_images` / `embed_texts` (and `match`), e.g.
  `polymodal.load(...)`: this module never loads one itself (data sits below infer).
- `filter_spec(spec, scores, ...)`: a new JSON Lines manifest of the records kept, pointing at
  the original image files (never modified), plus every dropped record and why.
- `find_duplicates(spec, against=...)`: exact duplicates (a hash of the decoded pixels),
  near-duplicate images (perceptual hash within a Hamming distance, or embeddings within a
  cosine), near-duplicate captions (the same text after normalisation); groups with the
  member kept; with `against`, the items that leak a test item. Streams the data a batch at a
  time; neighbours come from exact blocked search up to `index_min` items, from a FAISS index
  above (`faiss-cpu`; blocked numpy search when it is not installed).
- `corrupt(spec, out, ...)`: swapped captions, exact and near-duplicate copies, broken files,
  with the ground truth written beside them; `measure(...)` scores the detectors against it.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageEnhance

from polymodal.data.formats import Entry, open_dataset, record_to_json, write_jsonl
from polymodal.data.images import MAX_PIXELS, load_image
from polymodal.data.tools import words
from polymodal.errors import ConfigError, DataError
from polymodal.jsonl import jsonl_rows

log = logging.getLogger(__name__)

#: records decoded, hashed and embedded together (memory stays bounded by one batch of images)
BATCH = 256
#: above this many items, neighbours come from a FAISS index instead of all pairs
INDEX_MIN = 5000
#: default near-duplicate thresholds, chosen on a noisy shapes-world val split (docs/data-quality.md):
#: thumbnail cosine (resized, re-encoded, recoloured copies), shift-aligned cosine (shifted copies)
THUMB_COSINE = 0.95
ALIGNED_COSINE = 0.97
#: candidate pairs under this embedding cosine are not worth the shift-aligned comparison
CANDIDATE_FLOOR = 0.0
#: checks' defaults
MIN_SIDE, MAX_ASPECT, MAX_WORDS = 16, 3.0, 77


# ----------------------------------------------------------------------------------------
# Per-image features: content hash, perceptual hashes, a pixel embedding
# ----------------------------------------------------------------------------------------

def content_hash(img: Image.Image) -> str:
    """A hash of the decoded pixels (and size): byte-different files with equal pixels match."""
    arr = np.asarray(img.convert("RGB"))
    return hashlib.sha1(arr.tobytes() + str(arr.shape).encode()).hexdigest()


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m  # (n, n) orthonormal DCT-II


_DCT32 = _dct_matrix(32)


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash (pHash): the signs of the 8x8 lowest DCT frequencies of the 32x32
    greyscale image against their median. Robust to resizing, JPEG and small shifts and tints."""
    g = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT32 @ g @ _DCT32.T)[:8, :8].ravel()  # (64,)
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


def dhash(img: Image.Image) -> int:
    """64-bit difference hash: whether each pixel of a 9x8 greyscale image is brighter than its
    right neighbour."""
    g = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    return int(np.packbits((g[:, 1:] > g[:, :-1]).ravel()).view(">u8")[0])


def thumb_embedding(img: Image.Image, side: int = 16) -> np.ndarray:
    """A model-free image embedding: the side x side colour thumbnail, centred per channel and
    L2-normalised (3*side*side,). A copy resized, re-encoded, shifted by a few pixels or slightly
    recoloured stays close; a different scene does not."""
    a = np.asarray(img.convert("RGB").resize((side, side), Image.Resampling.BOX), dtype=np.float32)
    a = a - a.reshape(-1, 3).mean(0)
    v = a.ravel()
    return v / max(float(np.linalg.norm(v)), 1e-6)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


# ----------------------------------------------------------------------------------------
# Texts: which texts a record pairs with its image, normalisation, language
# ----------------------------------------------------------------------------------------

def record_texts(rec: dict) -> list[str]:
    """The texts paired with a record's image: its `captions`, else `caption`, else `text`."""
    caps = rec.get("captions")
    if isinstance(caps, list) and caps:
        return [c if isinstance(c, str) else "" for c in caps]
    for key in ("caption", "text"):
        if isinstance(rec.get(key), str):
            return [rec[key]]
    return []


def normalize_text(text: str) -> str:
    """Case, punctuation, accents' width forms and spacing removed: 'A red  circle!' == 'a red circle'."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = re.sub(r"[^\w\s]", " ", t)
    return " ".join(t.split())


def language(text: str) -> str:
    """'zh' (mostly CJK characters), 'en' (mostly ASCII letters), 'other', or '' for no letters."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return ""
    cjk = sum("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in letters)
    if cjk / len(letters) >= 0.5:
        return "zh"
    return "en" if sum(c.isascii() for c in letters) / len(letters) >= 0.9 else "other"


# ----------------------------------------------------------------------------------------
# Streaming the records of a spec a batch at a time, with their decoded images
# ----------------------------------------------------------------------------------------

@dataclass
class Item:
    """One record as the quality tools see it. `key` identifies it in scores and reports."""

    index: int
    key: str
    where: str
    record: dict | None
    image: Image.Image | None = None
    problems: list[str] = field(default_factory=list)


def record_key(e: Entry, seen: dict[str, int]) -> str:
    """A record's id, else where it was read (`file:line`); a repeated id gets `#k`."""
    rid = e.record.get("id") if e.record else None
    key = str(rid) if isinstance(rid, (str, int)) and str(rid) else e.where
    k = seen.get(key, 0)
    seen[key] = k + 1
    return key if k == 0 else f"{key}#{k}"


def iter_items(spec, split: str | None = None, batch_size: int = BATCH, decode: bool = True,
               max_pixels: int = MAX_PIXELS) -> Iterator[list[Item]]:
    """The records of a spec, batch_size at a time, each with its decoded image or its problems
    (an unreadable record or image is an item with a problem, never an exception)."""
    reader = open_dataset(spec, split)
    seen: dict[str, int] = {}
    batch: list[Item] = []
    for i, e in enumerate(reader.entries()):
        if e.error is not None:
            item = Item(i, record_key(e, seen), e.where, None, problems=[f"unreadable record: {e.error}"])
        else:
            item = Item(i, record_key(e, seen), e.where, e.record)
            img = e.record.get("image")
            if img is None:
                item.problems.append("no image")
            elif isinstance(img, str) and not os.path.isfile(img):
                item.problems.append(f"missing image: {img} does not exist")
            elif decode:
                try:
                    item.image = load_image(img, max_pixels=max_pixels)
                    item.image.load()
                except (DataError, OSError) as exc:
                    item.problems.append(f"unreadable image: {exc}")
        batch.append(item)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def spec_size(spec, split: str | None = None) -> int | None:
    """How many records a spec holds, when its reader knows without streaming (for progress bars)."""
    try:
        reader = open_dataset(spec, split)
        return None if reader.streaming else len(reader)
    except TypeError:
        return None


Progress = Callable[[int], None]  # called with the number of records just processed


# ----------------------------------------------------------------------------------------
# score
# ----------------------------------------------------------------------------------------

def score(spec, model=None, out: str | os.PathLike | None = None, split: str | None = None,
          batch_size: int = BATCH, lang: str | None = None, min_side: int = MIN_SIDE,
          max_aspect: float = MAX_ASPECT, max_words: int = MAX_WORDS, itm: bool = True,
          progress: Progress | None = None) -> dict:
    """Score every record of a spec; write one JSON line per record to `out`.

    Args:
        spec: a dataset spec (polymodal.data.formats).
        model: a loaded model with `embed_images` / `embed_texts` (a dual encoder or a fusion
            encoder with ITC), or an encoder-decoder captioner (`caption_logprob`), or None for
            the checks only. With `match` (an ITM head) and `itm`, the matching probability too.
        out: the scores file (JSON Lines), or None to keep nothing but the summary.
        lang: the expected language of the texts ('en', 'zh'); others are a problem.
        min_side, max_aspect, max_words: the checks' limits.

    Returns:
        the summary: {"records", "ok", "problems": {kind: count}, "score": {min, median, max}, "itm": ...,
        "caption_logprob": ...}

    Each line: {"id", "where", "image", "ok", "problems", "width", "height", "aspect", "words",
    "lang", "duplicate_text_of", "score", "itm", "caption_logprob"}; `score` is the mean cosine of
    the image with each of its texts (null without a model that embeds, or when the image is
    unreadable), `itm` the mean ITM probability (null without an ITM head), `caption_logprob` the
    mean over its texts of a captioner's mean per-token log-likelihood of the text given the image
    (null without an encoder-decoder captioner).
    """
    if lang is not None and lang not in ("en", "zh", "other"):
        raise ConfigError(f"--lang {lang!r}: one of en, zh, other")
    has_itm = bool(itm and model is not None and getattr(model, "can_match", lambda: False)())
    has_emb = model is not None and "embed_images" in getattr(model, "tasks", ("embed_images",))
    has_lp = bool(model is not None and getattr(model, "can_score_captions", lambda: False)())
    if model is not None and not (has_emb or has_itm or has_lp):
        raise ConfigError(f"the --model ({getattr(model, 'kind', 'model')}) cannot score image-text pairs: give a "
                          "dual encoder, a fusion encoder with ITC/ITM, or an encoder-decoder captioner")
    texts_seen: dict[str, str] = {}  # normalised text -> first record key
    kinds: dict[str, int] = {}
    scores, itms, lps = [], [], []
    n = ok = dup_texts = 0
    sink = open(out, "w", encoding="utf-8") if out is not None else None
    try:
        for batch in iter_items(spec, split, batch_size):
            rows = [_checks(it, texts_seen, lang, min_side, max_aspect, max_words) for it in batch]
            if model is not None:
                _model_scores(model, batch, rows, has_emb, has_itm, has_lp)
            for row in rows:
                n += 1
                ok += not row["problems"]
                for p in row["problems"]:
                    kind = p.split(":")[0]
                    kinds[kind] = kinds.get(kind, 0) + 1
                dup_texts += row["duplicate_text_of"] is not None
                if row["score"] is not None:
                    scores.append(row["score"])
                if row["itm"] is not None:
                    itms.append(row["itm"])
                if row["caption_logprob"] is not None:
                    lps.append(row["caption_logprob"])
                if sink is not None:
                    sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            if progress:
                progress(len(batch))
    finally:
        if sink is not None:
            sink.close()
    summary: dict[str, Any] = {"records": n, "ok": ok, "problems": kinds, "duplicate_texts": dup_texts}
    summary["score"] = _summary(scores)
    if has_itm:
        summary["itm"] = _summary(itms)
    if has_lp:
        summary["caption_logprob"] = _summary(lps)
    if out is not None:
        summary["out"] = str(out)
    return summary


def _summary(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values)
    return {"n": len(a), "min": round(float(a.min()), 4), "median": round(float(np.median(a)), 4),
            "max": round(float(a.max()), 4)}


def _checks(it: Item, texts_seen: dict, lang: str | None, min_side: int, max_aspect: float,
            max_words: int) -> dict:
    rec = it.record or {}
    img = rec.get("image")
    row: dict[str, Any] = {"id": it.key, "where": it.where, "image": img if isinstance(img, str) else None,
                           "ok": True, "problems": list(it.problems), "width": None, "height": None,
                           "aspect": None, "words": None, "lang": None, "duplicate_text_of": None,
                           "score": None, "itm": None, "caption_logprob": None}
    if it.image is not None:
        w, h = it.image.size
        row.update(width=w, height=h, aspect=round(max(w, h) / max(min(w, h), 1), 3))
        if min(w, h) < min_side:
            row["problems"].append(f"too small: {w}x{h} pixels, under {min_side} on a side")
        if row["aspect"] > max_aspect:
            row["problems"].append(f"extreme aspect ratio: {row['aspect']} over {max_aspect}")
    if it.record is not None:
        texts = record_texts(rec)
        if not texts or not any(t.strip() for t in texts):
            row["problems"].append("empty text: the record has no caption or text")
        else:
            row["words"] = max(words(t) for t in texts)
            langs = sorted({language(t) for t in texts if t.strip()})
            row["lang"] = langs[0] if len(langs) == 1 else ",".join(langs)
            if any(not t.strip() for t in texts):
                row["problems"].append("empty text: one of its captions is empty")
            if row["words"] > max_words:
                row["problems"].append(f"text too long: {row['words']} words, over {max_words}")
            if lang is not None and any(language(t) not in (lang, "") for t in texts):
                row["problems"].append(f"wrong language: {row['lang']}, expected {lang}")
            norm = " | ".join(normalize_text(t) for t in texts)
            if norm in texts_seen:
                row["duplicate_text_of"] = texts_seen[norm]
            else:
                texts_seen[norm] = it.key
    row["ok"] = not row["problems"]
    return row


def _model_scores(model, batch: list[Item], rows: list[dict], has_emb: bool, has_itm: bool, has_lp: bool) -> None:
    """Cosine, ITM probability and captioner log-likelihood (those the model has) of every
    readable item with its non-empty texts."""
    live = [(it, row, [t for t in record_texts(it.record)]) for it, row in zip(batch, rows)
            if it.image is not None and it.record is not None]
    live = [(it, row, [t for t in ts if t.strip()]) for it, row, ts in live]
    live = [x for x in live if x[2]]
    if not live:
        return
    flat = [t for _, _, ts in live for t in ts]
    owner = np.repeat(np.arange(len(live)), [len(ts) for _, _, ts in live])
    cos = None
    if has_emb:
        img_emb = np.asarray(model.embed_images([it.image for it, _, _ in live]))  # (B, E)
        txt_emb = np.asarray(model.embed_texts(flat))  # (T, E)
        cos = (txt_emb * img_emb[owner]).sum(1)  # (T,)
    paired = [live[o][0].image for o in owner]
    probs = np.asarray(model.match(paired, flat)) if has_itm else None
    lp = np.asarray(model.caption_logprob(paired, flat)) if has_lp else None  # (T,)
    for j, (_, row, _) in enumerate(live):
        if cos is not None:
            row["score"] = round(float(cos[owner == j].mean()), 5)
        if probs is not None:
            row["itm"] = round(float(probs[owner == j].mean()), 5)
        if lp is not None:
            row["caption_logprob"] = round(float(lp[owner == j].mean()), 5)


def read_scores(path: str | os.PathLike) -> list[dict]:
    """The rows of a scores file (`score`'s output); a malformed line is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such scores file; write one with `polymodal data score SPEC --model SRC --out {path}`")
    rows = []
    for n, row in jsonl_rows(path, "scores"):
        if isinstance(row, DataError):
            raise DataError(f"{path}:{n}: {row}")
        if not isinstance(row, dict) or "id" not in row:
            raise DataError(f"{path}:{n}: not a scores row (no 'id'); write the file with `polymodal data score`")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------
# filter
# ----------------------------------------------------------------------------------------

def filter_spec(spec, scores: str | os.PathLike, out: str | os.PathLike, min_score: float | None = None,
                keep_top: float | None = None, field: str = "score", dedup: str | os.PathLike | None = None,
                split: str | None = None, keep_problems: bool = False, progress: Progress | None = None) -> dict:
    """Write the records of `spec` that pass to a new JSON Lines manifest `out`.

    A record is dropped when its scores row has problems (unreadable image, empty text, …; unless
    `keep_problems`), when its `field` is under `min_score` or outside the best `keep_top`
    fraction, or when a dedup report (`find_duplicates`) names it as a duplicate not kept or a
    test leak. The original data are never touched: kept records point at the original image
    files (absolute paths). Writes `out` and `<out>.report.json` (every dropped record and why).

    Returns:
        {"spec", "out", "report", "records", "kept", "dropped", "reasons": {reason: count}, "threshold"}
    """
    if (min_score is None) == (keep_top is None):
        raise ConfigError("give exactly one of --min-score X (drop records scoring under X) or --keep-top P "
                          "(keep the best fraction P, 0 < P <= 1)")
    if keep_top is not None and not 0 < keep_top <= 1:
        raise ConfigError(f"--keep-top {keep_top}: a fraction of the records, 0 < P <= 1")
    rows = {r["id"]: r for r in read_scores(scores)}
    values = [r.get(field) for r in rows.values()]
    if not any(isinstance(v, (int, float)) for v in values):
        have = sorted({k for r in rows.values() for k, v in r.items() if isinstance(v, (int, float))})
        raise DataError(f"{scores}: no row has a number in {field!r}; score with a model (--model), or pick "
                        f"--field from: {', '.join(have) or 'none'}")
    threshold = min_score
    if keep_top is not None:
        ranked = sorted((v for v in values if isinstance(v, (int, float))), reverse=True)
        threshold = ranked[max(0, min(len(ranked), int(np.ceil(keep_top * len(ranked)))) - 1)]
    drop_dedup = _dedup_drops(dedup) if dedup is not None else {}
    reader = open_dataset(spec, split)
    seen: dict[str, int] = {}
    kept: list[dict] = []
    dropped: list[dict] = []
    missing: list[str] = []
    reasons: dict[str, int] = {}
    n = 0
    for e in reader.entries():
        n += 1
        key = record_key(e, seen)
        row = rows.get(key)
        if row is None:
            missing.append(key)
            continue
        why = []
        if e.error is not None:
            why.append("unreadable record")
        if row.get("problems") and not keep_problems:
            why += [p.split(":")[0] for p in row["problems"]]
        v = row.get(field)
        if not isinstance(v, (int, float)):
            if not why:
                why.append(f"no {field}")
        elif v < threshold:
            why.append(f"{field} under {threshold:.4g}")
        if key in drop_dedup:
            why.append(drop_dedup[key])
        if why:
            why = list(dict.fromkeys(why))
            for w in why:
                reasons[w] = reasons.get(w, 0) + 1
            dropped.append({"id": key, "where": e.where, field: v, "reasons": why})
        else:
            rec = record_to_json(e.record)
            if isinstance(rec.get("image"), str) and not _is_remote(rec["image"]):
                rec["image"] = os.path.abspath(rec["image"])
            kept.append(rec)
        if progress:
            progress(1)
    if missing:
        raise DataError(f"{scores}: has no row for {len(missing)} of the {n} records of the spec (first: "
                        f"{', '.join(missing[:5])}); it was written for another dataset — score this one with "
                        "`polymodal data score SPEC --model SRC --out FILE`")
    out = Path(out)
    if out.resolve() in {Path(f).resolve() for f in getattr(reader, "files", [])}:
        raise ConfigError(f"--out {out}: that is the input manifest; the original data are never overwritten, "
                          "name a new file")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, kept)
    report = Path(f"{out}.report.json")
    summary = {"spec": reader.describe(), "out": str(out), "report": str(report), "records": n, "kept": len(kept),
               "dropped": len(dropped), "reasons": reasons, "field": field,
               "threshold": None if threshold is None else round(float(threshold), 6)}
    report.write_text(json.dumps({**summary, "dropped_records": dropped}, ensure_ascii=False, indent=1))
    return summary


def _is_remote(s: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", s))


def _dedup_drops(path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such dedup report; write one with `polymodal data dedup SPEC --out {path}`")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); write it with `polymodal data dedup`") from exc
    if not isinstance(doc, dict) or "groups" not in doc:
        raise DataError(f"{path}: not a dedup report (no 'groups'); write it with `polymodal data dedup`")
    out = {}
    for g in doc["groups"]:
        for m in g["members"]:
            if m != g["kept"]:
                out.setdefault(m, f"{g['kind']} duplicate of {g['kept']}")
    for leak in doc.get("leaks", []):
        out.setdefault(leak["id"], f"leaks test item {leak['test_id']}")
    return out


# ----------------------------------------------------------------------------------------
# Neighbour search: exact blocked search for small sets, a FAISS index for large ones
# ----------------------------------------------------------------------------------------

def _faiss():
    try:
        import faiss  # optional: pip install polymodal[faiss]
    except ImportError:
        return None
    return faiss


def neighbours(x: np.ndarray, k: int = 10, queries: np.ndarray | None = None,
               index_min: int = INDEX_MIN) -> tuple[list[tuple[int, int, float]], str]:
    """Each row's k nearest rows of x by cosine (rows L2-normalised): (i, j, cosine) triples.

    Without `queries`: pairs within x, each once (i < j). With `queries`: (query row, x row).
    Up to `index_min` rows of x the search is exact (blocked matrix products, every pair compared);
    above it a FAISS HNSW index answers (approximate) when faiss is installed, else the same
    blocked search. Returns (triples, method).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    q = x if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    kk = min(len(x), k + (queries is None))
    faiss = _faiss()
    if len(x) > index_min and faiss is not None:
        index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.add(x)
        index.hnsw.efSearch = max(64, 2 * kk)
        sims, ids = index.search(q, kk)  # (Q, kk)
        method = f"faiss hnsw, {k} neighbours"
    else:
        block = max(16, (1 << 24) // max(len(x), 1))  # rows per product: about 64 MB of similarities
        sims, ids = np.empty((len(q), kk), np.float32), np.empty((len(q), kk), np.int64)
        for s in range(0, len(q), block):
            sim = q[s:s + block] @ x.T  # (b, N)
            top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
            ids[s:s + block], sims[s:s + block] = top, np.take_along_axis(sim, top, 1)
        method = f"exact (all pairs), {k} neighbours"
    out: dict[tuple[int, int], float] = {}
    for i, (srow, irow) in enumerate(zip(sims, ids)):
        for sim, j in zip(srow, irow):
            j = int(j)
            if j < 0 or (queries is None and j == i):
                continue
            out[(min(i, j), max(i, j)) if queries is None else (i, j)] = float(sim)
    return [(i, j, c) for (i, j), c in sorted(out.items())], method


def canonical(img: Image.Image, side: int = 64) -> np.ndarray:
    """The greyscale side x side image (uint8) that `aligned_cosine` compares."""
    return np.asarray(img.convert("L").resize((side, side), Image.Resampling.BICUBIC), dtype=np.uint8)


def aligned_cosine(a: np.ndarray, b: np.ndarray, max_shift: int = 4) -> np.ndarray:
    """For image pairs (P, S, S) (`canonical`), the cosine of the zero-mean overlap at the best
    shift within max_shift pixels: 1.0 for a copy shifted by whole pixels. The best few shifts
    come from the cross-correlation (FFT); the overlap cosine is computed exactly at each."""
    a = a.astype(np.float32) - a.mean((1, 2), keepdims=True, dtype=np.float32)
    b = b.astype(np.float32) - b.mean((1, 2), keepdims=True, dtype=np.float32)
    from scipy import fft

    p, size, r = a.shape[0], a.shape[1], max_shift
    # zero padding to at least size + r: no wrap-around within r; a 2-3-5-smooth length is ~2x
    # faster than 68 = 4 x 17 (scipy.fft, 3,000 pairs of 64 px: 1.3 s at 72 against 2.9 s with numpy at 68)
    n = fft.next_fast_len(size + r, real=True)
    corr = fft.irfft2(fft.rfft2(a, s=(n, n)) * np.conj(fft.rfft2(b, s=(n, n))), s=(n, n))  # (P, n, n)
    rows = np.r_[n - r:n, 0:r + 1]
    win = corr[:, rows][:, :, rows].reshape(p, -1)  # (P, (2r+1)^2): shifts -r..r in y and x
    top = np.argsort(-win, axis=1)[:, :3]  # (P, 3): each pair's best three shifts
    out = np.full(p, -1.0, np.float32)
    # One batched overlap cosine per distinct shift (at most (2r+1)^2), not one per pair: the
    # pairs that share a shift share the overlap's slices.
    for q in np.unique(top):
        dy, dx = (int(v) - r for v in divmod(int(q), 2 * r + 1))
        idx = np.flatnonzero((top == q).any(1))
        x = a[idx, max(0, dy):size + min(0, dy), max(0, dx):size + min(0, dx)].reshape(len(idx), -1)  # (m, overlap)
        y = b[idx, max(0, -dy):size + min(0, -dy), max(0, -dx):size + min(0, -dx)].reshape(len(idx), -1)
        x = x - x.mean(1, keepdims=True)
        y = y - y.mean(1, keepdims=True)
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-6)  # (m,)
        out[idx] = np.maximum(out[idx], cos)
    return out


def hash_pairs(h: np.ndarray, max_distance: int, queries: np.ndarray | None = None, k: int = 10,
               index_min: int = INDEX_MIN) -> tuple[list[tuple[int, int, int]], str]:
    """Pairs (i, j, Hamming distance) of 64-bit hashes within max_distance; as `cosine_pairs`
    (a FAISS binary HNSW index above index_min rows when faiss is installed)."""
    h = np.ascontiguousarray(h, dtype=np.uint64)
    q = h if queries is None else np.ascontiguousarray(queries, dtype=np.uint64)
    faiss = _faiss()
    pairs: list[tuple[int, int, int]] = []
    if len(h) > index_min and faiss is not None:
        to_bytes = lambda a: a.astype(">u8").view(np.uint8).reshape(-1, 8)  # noqa: E731
        index = faiss.IndexBinaryHNSW(64, 32)
        index.add(to_bytes(h))
        index.hnsw.efSearch = max(64, 2 * k)
        kk = min(len(h), k + (queries is None))
        for s in range(0, len(q), 8192):
            dist, ids = index.search(to_bytes(q[s:s + 8192]), kk)
            for r, (drow, irow) in enumerate(zip(dist, ids)):
                i = s + r
                for d, j in zip(drow, irow):
                    if j < 0 or d > max_distance or (queries is None and j == i):
                        continue
                    pairs.append((min(i, j), max(i, j), int(d)) if queries is None else (i, int(j), int(d)))
        return sorted(set(pairs)), f"faiss binary hnsw (k={k})"
    block = max(16, (1 << 22) // max(len(h), 1))  # rows per pass: about 32 MB of XORs
    for s in range(0, len(q), block):
        d = np.bitwise_count(q[s:s + block, None] ^ h[None, :])  # (b, N) Hamming distances
        if queries is None:
            d[np.tril_indices(d.shape[0], k=s, m=d.shape[1])] = 255
        r, c = np.nonzero(d <= max_distance)
        pairs += [(s + int(i), int(j), int(d[i, j])) for i, j in zip(r, c)]
    return pairs, "exact (all pairs)"


# ----------------------------------------------------------------------------------------
# dedup
# ----------------------------------------------------------------------------------------

@dataclass
class Features:
    """What dedup keeps of each readable item: hashes, a small embedding, a 64x64 greyscale copy."""

    keys: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    phash: list[int] = field(default_factory=list)
    emb: list[np.ndarray] = field(default_factory=list)
    canon: list[np.ndarray] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)

    def hashes(self) -> np.ndarray:
        return np.array(self.phash, dtype=np.uint64)

    def embeddings(self) -> np.ndarray:
        return np.stack(self.emb) if self.emb else np.zeros((0, 1), np.float32)


def features(spec, split: str | None = None, model=None, batch_size: int = BATCH,
             progress: Progress | None = None) -> Features:
    """Stream a spec and keep each readable image's content hash, pHash, embedding (the model's
    image embedding when a model is given, else `thumb_embedding`), `canonical` copy and normalised text."""
    f = Features()
    for batch in iter_items(spec, split, batch_size):
        good = [it for it in batch if it.image is not None]
        f.unreadable += [{"id": it.key, "where": it.where, "problem": "; ".join(it.problems)}
                         for it in batch if it.image is None]
        if good:
            if model is not None:
                f.emb += list(np.asarray(model.embed_images([it.image for it in good]), dtype=np.float32))
            else:
                f.emb += [thumb_embedding(it.image) for it in good]
            for it in good:
                f.keys.append(it.key)
                f.content.append(content_hash(it.image))
                f.phash.append(phash(it.image))
                f.canon.append(canonical(it.image))
                f.text.append(" | ".join(normalize_text(t) for t in record_texts(it.record)))
        if progress:
            progress(len(batch))
    return f


class _Union:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the root is the earliest item: it is kept


def _near_links(f: Features, t: Features | None, hash_distance, cosine, aligned, k: int,
                index_min: int) -> tuple[dict[tuple[int, int], dict], dict]:
    """Near-duplicate links (i, j) -> evidence, within f (t None) or from f's items to t's.

    Candidates are each item's k nearest neighbours by embedding; a candidate is a near duplicate
    when its embedding cosine reaches `cosine`, or its shift-aligned cosine reaches `aligned`
    (a copy shifted by a few pixels), or its pHash distance is within `hash_distance`.
    """
    base = f if t is None else t
    links: dict[tuple[int, int], dict] = {}
    method: dict[str, str] = {}
    if not f.keys or not base.keys or (t is None and len(f.keys) < 2):
        return links, method
    cand, method["neighbours"] = neighbours(base.embeddings(), k=k, index_min=index_min,
                                            queries=None if t is None else f.embeddings())
    check = []
    for i, j, c in cand:
        if cosine is not None and c >= cosine:
            links[(i, j)] = {"cosine": round(c, 4)}
        elif c >= CANDIDATE_FLOOR:
            check.append((i, j, c))
    if aligned is not None and check:
        for s in range(0, len(check), 4096):
            part = check[s:s + 4096]
            sims = aligned_cosine(np.stack([f.canon[i] for i, _, _ in part]), np.stack([base.canon[j] for _, j, _ in part]))
            for (i, j, c), a in zip(part, sims):
                if a >= aligned:
                    links[(i, j)] = {"cosine": round(c, 4), "aligned_cosine": round(float(a), 4)}
    if hash_distance is not None:
        pairs, method["phash"] = hash_pairs(base.hashes(), hash_distance, k=k, index_min=index_min,
                                            queries=None if t is None else f.hashes())
        for i, j, d in pairs:
            links.setdefault((i, j), {})["phash_distance"] = d
    return links, method


def find_duplicates(spec, against=None, split: str | None = None, against_split: str | None = None,
                    model=None, hash_distance: int | None = None, cosine: float | None = None,
                    aligned: float | None = ALIGNED_COSINE, captions: bool = True, index_min: int = INDEX_MIN,
                    k: int = 10, batch_size: int = BATCH, progress: Progress | None = None) -> dict:
    """Groups of duplicate records in a spec (and, with `against`, the records that leak a test item).

    Args:
        spec: the dataset spec to de-duplicate.
        against: a second spec (the test set): records of `spec` that duplicate any of its items leak.
        model: a loaded model whose `embed_images` gives the embeddings (else the colour thumbnail,
            `thumb_embedding`, which needs no model).
        hash_distance: near duplicates: pHash Hamming distance at most this (None: off; on simple
            synthetic scenes unrelated images collide, docs/data-quality.md).
        cosine: near duplicates: embedding cosine at least this (None: THUMB_COSINE for thumbnails;
            give one for a model's embeddings).
        aligned: near duplicates: shift-aligned greyscale cosine at least this (None: off).
        captions: also group records whose texts are equal after normalisation.
        index_min, k: candidates are each item's k nearest neighbours, from a FAISS index above
            index_min items.

    Returns:
        {"records", "unreadable", "groups": [{"kind": exact|near|caption, "kept", "members",
        "links": [[a, b, evidence]]}], "duplicates": {kind: records not kept}, "leaks": [...],
        "method", "thresholds"}. The member kept is the first one in the spec's order.
    """
    if hash_distance is not None and not 0 <= hash_distance <= 64:
        raise ConfigError(f"--hash-distance {hash_distance}: a Hamming distance between 0 and 64")
    if cosine is None and model is None:
        cosine = THUMB_COSINE
    for name, v in (("cosine", cosine), ("aligned", aligned)):
        if v is not None and not -1 <= v <= 1:
            raise ConfigError(f"--{name} {v}: a cosine between -1 and 1")
    f = features(spec, split, model, batch_size, progress)
    n = len(f.keys)
    groups: list[dict] = []
    exact = _Union(n)
    first: dict[str, int] = {}
    for i, h in enumerate(f.content):  # exact: equal pixels
        if h in first:
            exact.join(first[h], i)
        else:
            first[h] = i
    near = _Union(n)
    for i in range(n):
        near.join(exact.find(i), i)
    links, method = _near_links(f, None, hash_distance, cosine, aligned, k, index_min)
    for i, j in links:
        near.join(i, j)
    evidence: dict[int, list] = {}  # each near group's links, bucketed once (not one scan of all links per group)
    for (i, j), e in links.items():
        evidence.setdefault(near.find(i), []).append([f.keys[i], f.keys[j], e])
    for kind, uf in (("exact", exact), ("near", near)):
        members: dict[int, list[int]] = {}
        for i in range(n):
            members.setdefault(uf.find(i), []).append(i)
        for root, ms in members.items():
            if len(ms) < 2 or (kind == "near" and all(exact.find(m) == exact.find(root) for m in ms)):
                continue  # an exact group is listed once, as exact
            ev = evidence.get(root, []) if kind == "near" else []
            groups.append({"kind": kind, "kept": f.keys[ms[0]], "members": [f.keys[m] for m in ms], "links": ev})
    if captions:
        by_text: dict[str, list[int]] = {}
        for i, t in enumerate(f.text):
            if t:
                by_text.setdefault(t, []).append(i)
        groups += [{"kind": "caption", "kept": f.keys[ms[0]], "members": [f.keys[m] for m in ms], "links": []}
                   for ms in by_text.values() if len(ms) > 1]
    counts = {kind: sum(len(g["members"]) - 1 for g in groups if g["kind"] == kind)
              for kind in ("exact", "near", "caption")}
    report: dict[str, Any] = {"records": n + len(f.unreadable), "unreadable": f.unreadable, "groups": groups,
                              "duplicates": counts, "method": method,
                              "thresholds": {"hash_distance": hash_distance, "cosine": cosine, "aligned": aligned,
                                             "embedding": "model" if model is not None else "thumbnail"}}
    if against is not None:
        t = features(against, against_split, model, batch_size, progress)
        report["leaks"] = _leaks(f, t, hash_distance, cosine, aligned, k, index_min)
        report["against"] = {"records": len(t.keys) + len(t.unreadable)}
    return report


def _leaks(f: Features, t: Features, hash_distance, cosine, aligned, k: int, index_min: int) -> list[dict]:
    """Items of f that duplicate an item of t: equal pixels, or a near-duplicate link."""
    found: dict[int, dict] = {}
    test_content = {h: j for j, h in enumerate(t.content)}
    for i, h in enumerate(f.content):
        if h in test_content:
            found[i] = {"id": f.keys[i], "test_id": t.keys[test_content[h]], "kind": "exact"}
    links, _ = _near_links(f, t, hash_distance, cosine, aligned, k, index_min)
    for (i, j), ev in sorted(links.items()):
        found.setdefault(i, {"id": f.keys[i], "test_id": t.keys[j], "kind": "near", **ev})
    return [found[i] for i in sorted(found)]


# ----------------------------------------------------------------------------------------
# corrupt: known noise, with its ground truth, to measure the detectors
# ----------------------------------------------------------------------------------------

#: the near-duplicate transforms (plus "exact", a byte copy under another name)
TRANSFORMS = ("exact", "resize", "jpeg", "shift", "recolour")
BROKEN = ("empty", "truncated", "not_an_image", "missing")
_TEXT_KEYS = ("caption", "captions", "captions_zh", "text")


def transform(img: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    """A near-duplicate of img: resized (x0.6-0.8 or x1.25-1.6), shifted 2-4 pixels (edges
    repeated), or slightly recoloured (brightness, colour saturation, contrast each within 8%).
    ('jpeg' is done when saving.)"""
    w, h = img.size
    if kind == "resize":
        f = rng.choice((rng.uniform(0.6, 0.8), rng.uniform(1.25, 1.6)))
        return img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.BICUBIC)
    if kind == "shift":
        dx, dy = rng.choice((-1, 1)) * rng.randint(2, 4), rng.choice((-1, 1)) * rng.randint(0, 4)
        a = np.asarray(img)
        a = np.pad(a, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
        a = a[abs(dy) - dy: abs(dy) - dy + h, abs(dx) - dx: abs(dx) - dx + w]
        return Image.fromarray(np.ascontiguousarray(a))
    if kind == "recolour":
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Color, ImageEnhance.Contrast):
            img = enhancer(img).enhance(rng.uniform(0.92, 1.08))
        return img
    return img


def corrupt(spec, out: str | os.PathLike, swap: float = 0.10, duplicates: float = 0.05, broken: int = 10,
            seed: int = 0, split: str | None = None) -> dict:
    """Inject known noise into a copy of a dataset: a new manifest `out/noisy.jsonl`, the new image
    files it needs under `out/images/`, and the ground truth in `out/truth.json`.

    - swapped captions: a `swap` fraction of records get the texts of another record (a cycle
      over the chosen ones; texts that would stay the same are not chosen);
    - duplicates: a `duplicates` fraction of records get a copy, spread over TRANSFORMS
      (an exact byte copy, resized, re-encoded as JPEG quality 60-80, shifted, recoloured)
      with the original's texts;
    - broken: `broken` extra records whose image is an empty file, a truncated PNG, text saved
      as .png, or a file that does not exist.
    Records are shuffled (seeded); the original files are never touched.
    """
    for name, v in (("swap", swap), ("duplicates", duplicates)):
        if not 0 <= v < 1:
            raise ConfigError(f"--{name} {v}: a fraction, 0 <= {name} < 1")
    if broken < 0:
        raise ConfigError(f"--broken {broken}: a count, 0 or more")
    rng = random.Random(seed)
    recs = []
    seen: dict[str, int] = {}
    for e in open_dataset(spec, split).entries():
        if e.error is not None:
            raise DataError(f"{e.where}: {e.error}; corrupt needs a clean dataset to start from")
        rec = record_to_json(e.record)
        rec["id"] = record_key(e, seen)
        if not isinstance(rec.get("image"), str) or not os.path.isfile(rec["image"]):
            raise DataError(f"{e.where}: image {rec.get('image')!r} is not a file; corrupt needs image files")
        rec["image"] = os.path.abspath(rec["image"])
        recs.append(rec)
    if len(recs) < 4:
        raise DataError(f"{spec}: {len(recs)} records; corrupt needs at least 4")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    order = list(range(len(recs)))
    rng.shuffle(order)
    n_swap, n_dup = round(swap * len(recs)), round(duplicates * len(recs))
    texts = [tuple(normalize_text(t) for t in record_texts(r)) for r in recs]
    chosen, taken = [], set()
    for i in order:  # records whose texts differ from every other chosen one's: a cycle changes each
        if len(chosen) == n_swap:
            break
        if texts[i] not in taken:
            chosen.append(i)
            taken.add(texts[i])
    originals = {i: {k: recs[i][k] for k in _TEXT_KEYS if k in recs[i]} for i in chosen}
    for a, b in zip(chosen, chosen[1:] + chosen[:1]):
        for k in _TEXT_KEYS:
            recs[a].pop(k, None)
        recs[a].update(originals[b])
    truth: dict[str, Any] = {"spec": str(spec), "seed": seed, "records": len(recs),
                             "swapped": [{"id": recs[a]["id"], "texts_of": recs[b]["id"]}
                                         for a, b in zip(chosen, chosen[1:] + chosen[:1])],
                             "duplicates": [], "broken": []}
    swapped = set(chosen)
    pool = [i for i in order if i not in swapped]
    new = []
    for d, i in enumerate(pool[:n_dup]):
        kind = TRANSFORMS[d % len(TRANSFORMS)]
        src = recs[i]
        rid = f"dup-{d:05d}-{src['id']}"
        if kind == "exact":
            path = out / "images" / f"{rid}{Path(src['image']).suffix}"
            shutil.copyfile(src["image"], path)
        else:
            img = load_image(src["image"])
            img = transform(img, kind, rng)
            path = out / "images" / f"{rid}.{'jpg' if kind == 'jpeg' else 'png'}"
            if kind == "jpeg":
                img.save(path, quality=rng.randint(60, 80))
            else:
                img.save(path)
        new.append({**src, "id": rid, "image": str(path.resolve())})
        truth["duplicates"].append({"id": rid, "of": src["id"], "transform": kind})
    donors = pool[n_dup:] or pool
    for b in range(broken):
        kind = BROKEN[b % len(BROKEN)]
        src = recs[donors[b % len(donors)]]
        rid = f"broken-{b:05d}"
        path = out / "images" / f"{rid}.png"
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "truncated":
            data = Path(src["image"]).read_bytes()
            path.write_bytes(data[: max(8, len(data) // 3)])
        elif kind == "not_an_image":
            path.write_text("this is not an image\n")
        new.append({**src, "id": rid, "image": str(path.resolve())})
        truth["broken"].append({"id": rid, "kind": kind})
    recs += new
    rng.shuffle(recs)
    write_jsonl(out / "noisy.jsonl", recs)
    truth["records"] = len(recs)
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return {"out": str(out), "spec": f"jsonl:{out / 'noisy.jsonl'}", "truth": str(out / "truth.json"),
            "records": len(recs), "swapped": len(chosen), "duplicates": len(truth["duplicates"]),
            "broken": len(truth["broken"])}


# ----------------------------------------------------------------------------------------
# measure: each detector's precision and recall against corrupt's ground truth
# ----------------------------------------------------------------------------------------

def _pr(flagged: set, true: set) -> dict:
    tp = len(flagged & true)
    return {"precision": round(tp / len(flagged), 4) if flagged else None,
            "recall": round(tp / len(true), 4) if true else None,
            "flagged": len(flagged), "true": len(true), "true_positives": tp}


def measure(truth: str | os.PathLike, scores: str | os.PathLike | None = None, dedup: str | os.PathLike | None = None,
            min_score: float | None = None, field: str = "score") -> dict:
    """Precision and recall of each detector against `corrupt`'s truth.json.

    - swapped captions: records with a readable image whose `field` is under `min_score`;
    - broken files: records whose scores row reports a missing or unreadable image;
    - exact duplicates: records in an exact group of the dedup report; near duplicates: records
      in a near group (truth: the injected copy and its original, per transform);
    - all image duplicates: records in an exact or near group.
    """
    truth = json.loads(Path(truth).read_text())
    out: dict[str, Any] = {}
    if scores is not None:
        rows = read_scores(scores)
        broken = {r["id"] for r in rows if any(p.startswith(("missing image", "unreadable image"))
                                               for p in r.get("problems", []))}
        out["broken"] = _pr(broken, {b["id"] for b in truth["broken"]})
        if min_score is not None:
            flagged = {r["id"] for r in rows if isinstance(r.get(field), (int, float)) and r[field] < min_score}
            out["swapped"] = {**_pr(flagged, {s["id"] for s in truth["swapped"]}), "min_score": min_score,
                              "field": field}
    if dedup is not None:
        rep = json.loads(Path(dedup).read_text())
        in_group = {kind: {m for g in rep["groups"] if g["kind"] == kind for m in g["members"]}
                    for kind in ("exact", "near")}
        pairs = {kind: {d["id"] for d in truth["duplicates"] if (d["transform"] == "exact") == (kind == "exact")}
                 | {d["of"] for d in truth["duplicates"] if (d["transform"] == "exact") == (kind == "exact")}
                 for kind in ("exact", "near")}
        out["exact_duplicates"] = _pr(in_group["exact"], pairs["exact"])
        out["near_duplicates"] = _pr(in_group["near"], pairs["near"])
        out["all_duplicates"] = _pr(in_group["exact"] | in_group["near"], pairs["exact"] | pairs["near"])
        per = {}
        for kind in TRANSFORMS:
            copies = [d for d in truth["duplicates"] if d["transform"] == kind]
            found = in_group["exact"] | in_group["near"]
            per[kind] = {"copies": len(copies), "found": sum(d["id"] in found and d["of"] in found for d in copies)}
        out["per_transform"] = per
    return out


def pick_threshold(truth: str | os.PathLike, scores: str | os.PathLike, field: str = "score") -> dict:
    """The `min_score` that maximises F1 of the swapped-caption detector against a truth.json
    (choose it on a noisy val split, then apply it elsewhere): {"min_score", "precision", "recall", "f1"}."""
    swapped = {s["id"] for s in json.loads(Path(truth).read_text())["swapped"]}
    rows = [(r[field], r["id"] in swapped) for r in read_scores(scores) if isinstance(r.get(field), (int, float))]
    if not rows or not swapped:
        raise DataError(f"{scores}: no {field} values, or {truth} has no swapped records, to choose a threshold on")
    rows.sort()
    best = {"f1": -1.0}
    tp = 0
    for k, (v, pos) in enumerate(rows):
        tp += pos
        nxt = rows[k + 1][0] if k + 1 < len(rows) else v + 1e-3
        if nxt == v:
            continue
        p, r = tp / (k + 1), tp / len(swapped)
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 > best["f1"]:
            best = {"min_score": round((v + nxt) / 2, 6), "precision": round(p, 4), "recall": round(r, 4),
                    "f1": round(f1, 4)}
    return best
