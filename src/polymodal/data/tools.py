"""Data tools behind `polymodal data validate|stats|shard`: check, summarise and shard a dataset spec."""
from __future__ import annotations

import io
import json
import logging
import os
import random
import statistics
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from polymodal.data.fields import TEXT_FIELDS, boxes_outside, check_record
from polymodal.data.formats import Entry, open_dataset, record_to_json
from polymodal.data.images import MAX_PIXELS, load_image
from polymodal.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def validate(spec, split: str | None = None, task=None, decode: bool = True,
             max_errors: int = 10, max_pixels: int = MAX_PIXELS) -> dict:
    """Check every record of a spec (fields, images, ids unique); return counts and the first
    offending records.

    Args:
        spec: a dataset spec (see polymodal.data.formats).
        split: which split.
        task: also require the fields of this task (a `polymodal.tasks.Task`, e.g. `get_task("vqa")`).
        decode: decode every image (else only check the files exist).
        max_errors: how many offending records to list.
        max_pixels: the decompression-bomb limit used for decoding.

    Returns:
        {"spec", "records", "ok", "bad", "problems": {kind: count}, "first": [{"where", "problem"}],
         "images": distinct images checked}
    """
    reader = open_dataset(spec, split)
    seen: dict[str, str | None] = {}  # image path -> problem (None when fine)
    ids: dict[str, str] = {}  # record id -> where it first appeared
    kinds: Counter = Counter()
    first: list[dict] = []
    n = ok = 0
    for e in reader.entries():
        n += 1
        if e.error is not None:
            found = [("unreadable record", e.error)]
        else:
            found = check_record(e.record, task)
            rid = e.record.get("id")
            if isinstance(rid, str) and rid in ids:
                found.append(("duplicate id", f"id {rid!r} is also the id of {ids[rid]}; ids must be unique "
                                              "(predictions and metrics are keyed by them)"))
            elif isinstance(rid, str):
                ids[rid] = e.where
            img = e.record.get("image")
            if isinstance(img, (str, bytes, bytearray)) or hasattr(img, "size"):
                found += _check_image(img, seen, decode, max_pixels, e.record)
        if found:
            for kind, _ in found:
                kinds[kind] += 1
            if len(first) < max_errors:
                first.append({"where": e.where, "problem": "; ".join(msg for _, msg in found)})
        else:
            ok += 1
    return {"spec": reader.describe(), "records": n, "ok": ok, "bad": n - ok, "problems": dict(kinds),
            "first": first, "images": len(seen)}


def _check_image(img, seen: dict, decode: bool, max_pixels: int, record: dict) -> list[tuple[str, str]]:
    key = img if isinstance(img, str) else None
    if key is not None and key in seen:
        result = seen[key]
    else:
        result = None
        size = None
        if isinstance(img, str) and not os.path.isfile(img):
            result = ("missing image", f"image file {img} does not exist")
        elif decode:
            try:
                size = load_image(img, max_pixels=max_pixels).size
            except DataError as exc:
                result = ("unreadable image", str(exc))
        result = (result, size)
        if key is not None:
            seen[key] = result
        else:
            seen[f"<bytes {len(seen)}>"] = result
    problem, size = result
    out = [problem] if problem else []
    if size:
        out += [("bad field", message) for message in boxes_outside(record, size)]
    return out


def _summary(values: list[float]) -> dict:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "mean": round(statistics.fmean(values), 2),
            "max": max(values)}


def words(text: str) -> int:
    """Words of a text; Chinese (no spaces) counts characters."""
    n = len(text.split())
    return n if n > 1 or text.isascii() else len(text.strip())


def _length(text: str) -> tuple[int, int]:
    return words(text), len(text)


def stats(spec, split: str | None = None, max_images: int = 1000, top: int = 20) -> dict:
    """Summarise a spec: record and image counts, image sizes, text lengths, answer/label distributions.

    Args:
        spec: a dataset spec.
        split: which split.
        max_images: how many distinct images to open (headers only) for the size summary.
        top: how many of the most common answers / labels / question types to list.
    """
    reader = open_dataset(spec, split)
    n = bad = 0
    fields: Counter = Counter()
    images: set = set()
    widths, heights = [], []
    words: dict[str, list[int]] = {}
    per_image: list[int] = []
    counters = {k: Counter() for k in ("question_type", "answer_type", "answers", "label")}
    for e in reader.entries():
        n += 1
        if e.error is not None:
            bad += 1
            continue
        rec = e.record
        fields.update(k for k in rec if not k.startswith("_"))
        img = rec.get("image")
        key = img if isinstance(img, str) else (id(img) if img is not None else None)
        if key is not None and key not in images:
            images.add(key)
            if len(widths) < max_images:
                size = _image_size(img)
                if size:
                    widths.append(size[0])
                    heights.append(size[1])
        for key in ("caption", "question", "text", "source", "target", "ref"):
            if isinstance(rec.get(key), str):
                words.setdefault(key, []).append(_length(rec[key])[0])
        for key in ("captions", "captions_zh"):
            if isinstance(rec.get(key), list):
                words.setdefault(key, []).extend(_length(c)[0] for c in rec[key] if isinstance(c, str))
        if isinstance(rec.get("captions"), list):
            per_image.append(len(rec["captions"]))
        for key in ("question_type", "answer_type", "label"):
            if key in rec and isinstance(rec[key], (str, int)):
                counters[key][str(rec[key])] += 1
        if isinstance(rec.get("answers"), list) and rec["answers"]:
            counters["answers"][Counter(map(str, rec["answers"])).most_common(1)[0][0]] += 1
    out: dict[str, Any] = {"spec": reader.describe(), "records": n, "unreadable": bad, "images": len(images),
                           "fields": dict(fields)}
    if widths:
        out["image_size"] = {"sampled": len(widths), "width": _summary(widths), "height": _summary(heights)}
    if words:
        out["text_words"] = {k: _summary(v) for k, v in words.items()}
    if per_image:
        out["captions_per_image"] = _summary(per_image)
    for key, c in counters.items():
        if c:
            out[key] = {"distinct": len(c), "top": dict(c.most_common(top))}
    return out


def _image_size(img) -> tuple[int, int] | None:
    try:
        if isinstance(img, str):
            with Image.open(img) as im:
                return im.size
        if isinstance(img, (bytes, bytearray)):
            with Image.open(io.BytesIO(img)) as im:
                return im.size
        if hasattr(img, "size"):
            return tuple(img.size)
    except Exception:  # stats skip what validate reports
        return None
    return None


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644  # fixed metadata: same records, same bytes
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _image_bytes(img) -> tuple[bytes, str]:
    """The image as stored bytes and its extension: files are copied as they are, never re-encoded."""
    if isinstance(img, str):
        data = Path(img).read_bytes()
        ext = Path(img).suffix.lower().lstrip(".") or "bin"
        return data, {"jpeg": "jpg", "tiff": "tif"}.get(ext, ext)
    if isinstance(img, (bytes, bytearray)):
        try:
            fmt = (Image.open(io.BytesIO(img)).format or "bin").lower()
        except Exception:
            fmt = "bin"
        return bytes(img), {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), "png"


def shard(spec, out: str | os.PathLike, split: str | None = None, maxcount: int = 1000,
          maxsize: int = 1 << 30, prefix: str = "shards", shuffle_seed: int | None = None) -> dict:
    """Write a spec's records as WebDataset tar shards (`KEY.json` + `KEY.<image ext>` per record).

    Records whose image is missing are skipped and counted. Output is deterministic.

    Args:
        spec: a dataset spec.
        out: the folder for the shards (created).
        split: which split.
        maxcount: records per shard at most.
        maxsize: bytes per shard at most (approximately).
        prefix: shard file names are PREFIX-000000.tar, ...
        shuffle_seed: shuffle the records before writing (streamed training cannot shuffle
            globally); None keeps their order.

    Returns:
        {"shards": [paths], "records": written, "skipped": k, "spec": "wds:OUT/PREFIX-{000000..N}.tar"}
    """
    if maxcount < 1:
        raise ConfigError(f"maxcount {maxcount}: need at least one record per shard")
    reader = open_dataset(spec, split)
    entries: Iterator[Entry]
    if shuffle_seed is not None and not reader.streaming:
        order = list(range(len(reader)))
        random.Random(shuffle_seed).shuffle(order)
        entries = (reader.entry(i) for i in order)
    else:
        entries = reader.entries()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    tar, count, size, written, skipped, index = None, 0, 0, 0, 0, 0
    try:
        for e in entries:
            if e.error is not None:
                skipped += 1
                log.warning("shard: skipped %s: %s", e.where, e.error)
                continue
            rec = e.record
            parts: list[tuple[str, bytes]] = []
            if rec.get("image") is not None:
                try:
                    data, ext = _image_bytes(rec["image"])
                except OSError as exc:
                    skipped += 1
                    log.warning("shard: skipped %s: cannot read its image (%s)", e.where, exc)
                    continue
                parts.append((ext, data))
            meta = record_to_json({k: v for k, v in rec.items() if k != "image"})
            parts.insert(0, ("json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")))
            nbytes = sum(len(d) for _, d in parts)
            if tar is None or count >= maxcount or (count and size + nbytes > maxsize):
                if tar is not None:
                    tar.close()
                path = out / f"{prefix}-{len(shards):06d}.tar"
                tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
                shards.append(str(path))
                count = size = 0
            key = f"{index:09d}"
            for ext, data in parts:
                tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
            count, size, written, index = count + 1, size + nbytes, written + 1, index + 1
    finally:
        if tar is not None:
            tar.close()
    last = max(len(shards) - 1, 0)
    pattern = f"{out}/{prefix}-{{{0:06d}..{last:06d}}}.tar" if len(shards) > 1 else (shards[0] if shards else "")
    return {"shards": shards, "records": written, "skipped": skipped, "spec": f"wds:{pattern}"}


def fit_tokenizer(specs: list[str], out: str | os.PathLike, split: str = "train", vocab_size: int = 2000) -> dict:
    """Fit a small WordPiece tokenizer to the texts of dataset specs (`polymodal data tokenizer`).

    Returns:
        {"out": the tokenizer folder, "vocab_size", "texts": how many texts it was fitted to}
    """
    from polymodal.processing import Processor, train_tokenizer

    texts: list[str] = []
    for spec in specs:
        for e in open_dataset(spec, split).entries():
            if e.error is not None:  # an unreadable record has no texts to give; the others do
                log.warning("tokenizer: skipped %s: %s", e.where, e.error)
                continue
            for key in (*TEXT_FIELDS, "captions", "captions_zh", "answers"):
                value = e.record.get(key)
                texts += [t for t in (value if isinstance(value, list) else [value]) if isinstance(t, str) and t.strip()]
    if not texts:
        raise DataError(f"{', '.join(specs)}: no texts to fit a tokenizer to")
    path = train_tokenizer(texts, out, vocab_size=vocab_size)
    return {"out": str(path), "vocab_size": Processor(tokenizer=str(path)).vocab_size, "texts": len(texts)}
