"""Generating a shapes-world dataset on disk.

Every image is drawn from its own RNG seeded by (seed, index), so generation is deterministic,
parallel and any subset can be regenerated. `generate()` writes the real formats the readers
of `polymodal.data.formats` read (JSONL manifests, COCO captions, Karpathy split file, VQAv2
JSON, class-per-folder tree) with the writers beside those readers; see docs/data.md for the layout.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from pathlib import Path

from PIL import Image

from polymodal.data.formats import write_class_tree, write_coco_captions, write_jsonl, write_karpathy, write_vqa
from polymodal.data.shapes.render import render
from polymodal.data.shapes.world import (ANSWERS, COLORS, COMPOSITIONAL_SPLIT, HELD_OUT, SHAPES, SIZES, describe,
                                         detection_phrases, sample_scene)
from polymodal.errors import DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


DEFAULT_SPLITS = "train=0.8,val=0.05,test=0.1,comp=0.05"


def parse_splits(text: str, n: int) -> dict[str, int]:
    """'train=0.8,val=0.1,test=0.1' (fractions of n) or 'train=4000,val=500' (counts) -> counts.

    Values with a decimal point are fractions (normalised by their sum and rounded so that the
    counts add up to n; the last split takes the remainder); whole numbers are counts.
    """
    parts, fractions = {}, False
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name.strip()):
            raise DataError(f"split {item!r}: write NAME=FRACTION or NAME=COUNT, e.g. train=0.8,val=0.1,test=0.1")
        try:
            parts[name.strip()] = float(value)
            fractions = fractions or "." in value
        except ValueError:
            raise DataError(f"split {item!r}: {value!r} is not a number") from None
    if not parts:
        raise DataError("no splits given; e.g. --split train=0.8,val=0.1,test=0.1")
    if any(v < 0 for v in parts.values()):
        raise DataError(f"splits {text!r}: sizes must not be negative")
    if fractions:
        total = sum(parts.values())
        counts, used = {}, 0
        names = list(parts)
        for name in names[:-1]:
            counts[name] = int(round(n * parts[name] / total))
            used += counts[name]
        counts[names[-1]] = max(0, n - used)
        return counts
    if not all(v.is_integer() for v in parts.values()):
        raise DataError(f"splits {text!r}: give all fractions (<= 1) or all whole counts")
    return {k: int(v) for k, v in parts.items()}


def make_example(index: int, seed: int, size: int = 64, split: str = "train", noise: float = 6.0,
                 min_objects: int = 1, max_objects: int = 6) -> tuple[Image.Image, dict, dict]:
    """Scene, image and derived text of image `index`; deterministic in (seed, index, split, size)."""
    rnd = random.Random(f"shapes:{seed}:{index}")
    scene = sample_scene(rnd, size, split, min_objects, max_objects)
    image = render(scene, noise=noise, seed=(seed, index))
    text = describe(scene, rnd, split)
    # detection phrases from a stream of their own: the other texts stay as they were
    text["phrases"] = detection_phrases(scene, random.Random(f"shapes:detect:{seed}:{index}"), split)
    return image, scene, text


def _records(index: int, split: str, scene: dict, text: dict, image: str) -> dict[str, list[dict]]:
    """The JSONL records of one image, per task."""
    iid = str(index)
    base = {"image_id": iid, "image": image}
    # every object's box and attributes: object-level supervision (the object_attributes objective)
    objects = [{"box": o["box"], "color": o["color"], "shape": o["shape"], "size": o["size"]} for o in scene["objects"]]
    return {
        "captions": [{"id": iid, "image": image, "caption": text["captions"][0], "captions": text["captions"],
                      "captions_zh": text["captions_zh"], "split": split, "scene": scene, "objects": objects}],
        "vqa": [{"id": f"{iid}_q{k}", **base, "question": q["question"], "answers": [q["answer"]],
                 "question_type": q["question_type"], "answer_type": q["answer_type"],
                 "question_objects": [[scene["objects"][i]["box"] for i in hop] for hop in q["objects"]],
                 "objects": objects}
                for k, q in enumerate(text["qa"])],
        "classify": [{"id": f"{iid}_s{k}", **base, "text": s["text"], "label": s["label"]}
                     for k, s in enumerate(text["statements"])],
        "ground": [{"id": f"{iid}_r{k}", **base, "ref": r["ref"], "box": r["box"], "objects": objects}
                   for k, r in enumerate(text["refs"])],
        "detect": [{"id": f"{iid}_d{k}", **base, "text": p["text"], "boxes": p["boxes"],
                    "phrase_kind": p["phrase_kind"], "objects": objects} for k, p in enumerate(text.get("phrases", []))],
        "translate": [{"id": f"{iid}_t{k}", **base, "source": en, "target": zh}
                      for k, (en, zh) in enumerate(zip(text["captions"], text["captions_zh"]))],
    }


#: The record files the world writes, `{name}_{split}.jsonl`; a task names the one it reads
#: (`Task.shapes_file`).
RECORD_FILES = ("captions", "vqa", "classify", "ground", "translate", "detect")


def _work(args) -> list[tuple[int, dict[str, list[dict]]]]:
    """Worker: render and write images [start, stop), return their records."""
    out_dir, start, stop, bounds, seed, size, noise, min_objects, max_objects = args
    out = []
    for index in range(start, stop):
        split = _split_of(bounds, index)
        image, scene, text = make_example(index, seed, size, split, noise, min_objects, max_objects)
        rel = f"images/{index:06d}.png"
        image.save(Path(out_dir) / rel, format="PNG", compress_level=1)
        out.append((index, _records(index, split, scene, text, rel)))
    return out


def _split_of(bounds: list[tuple[str, int, int]], index: int) -> str:
    for name, lo, hi in bounds:
        if lo <= index < hi:
            return name
    raise IndexError(index)


def generate(out: str | os.PathLike, n: int = 1000, seed: int = 0, size: int = 64,
             splits: str | dict[str, int] = DEFAULT_SPLITS, noise: float = 6.0, workers: int = 0,
             min_objects: int = 1, max_objects: int = 6, overwrite: bool = False) -> dict:
    """Generate a shapes-world dataset in `out` and return its meta record.

    Args:
        out: directory to write (created; must be empty or a previous shapes output).
        n: total number of images over all splits.
        seed: the dataset seed; image i is drawn from (seed, i) alone.
        size: canvas side in pixels (16-1024; 64 is the default, 224 the largest usual).
        splits: "train=0.8,val=0.05,test=0.1,comp=0.05" (fractions or counts) or a dict of counts.
            A split named `comp` is the compositional split (HELD_OUT colour-shape pairs).
        noise: pixel noise standard deviation (0 = clean).
        workers: processes that render in parallel (0: one per CPU core, at most 8); the
            output is identical for any number.
        min_objects, max_objects: object count range per scene.
        overwrite: replace the files of an earlier run in `out`. Only the files the generator
            writes are removed; a folder that also holds anything else (a user's notes) is
            refused, and nothing in it is touched.
    """
    if not 16 <= size <= 1024:
        raise DataError(f"--size {size}: choose a canvas side between 16 and 1024 pixels")
    if not 1 <= min_objects <= max_objects <= 8:
        raise DataError(f"objects per scene {min_objects}..{max_objects}: need 1 <= min <= max <= 8")
    counts = parse_splits(splits, n) if isinstance(splits, str) else dict(splits)
    n = sum(counts.values())
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: not a directory; choose a new --out")
    if out.exists() and any(out.iterdir()):
        if not (out / "meta.json").is_file() or not overwrite:
            raise DataError(f"{out}: directory is not empty; choose a new --out"
                            + (" or pass --overwrite" if (out / "meta.json").is_file() else ""))
        _remove_earlier_output(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    bounds, lo = [], 0
    for name, k in counts.items():
        bounds.append((name, lo, lo + k))
        lo += k
    chunk = 250
    workers = workers or min(8, os.cpu_count() or 1)
    jobs = [(str(out), s, min(s + chunk, n), bounds, seed, size, noise, min_objects, max_objects)
            for s in range(0, n, chunk)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers) as pool:
            results = pool.map(_work, jobs)
    else:
        results = [_work(j) for j in jobs]
    per_split: dict[str, dict[str, list[dict]]] = {name: {t: [] for t in RECORD_FILES} for name in counts}
    for chunk_out in results:
        for index, recs in chunk_out:
            split = _split_of(bounds, index)
            for task, rs in recs.items():
                per_split[split][task].extend(rs)
    t_render = time.perf_counter() - t0

    for split, tasks in per_split.items():
        for task, rs in tasks.items():
            write_jsonl(out / f"{task}_{split}.jsonl", rs)
        write_coco_captions(out / f"coco_captions_{split}.json", tasks["captions"], size,
                            f"shapes world, {split} split", str(FORMAT_VERSION))
        write_vqa(out, split, tasks["vqa"], f"shapes world, {split} split", "images/{image_id:06d}.png")
        write_class_tree(out, split, [(r["image"], r["scene"]["objects"][0]["shape"]) for r in tasks["captions"]
                                      if len(r["scene"]["objects"]) == 1])
    write_karpathy(out / "dataset_shapes.json", {split: tasks["captions"] for split, tasks in per_split.items()},
                   "shapes")

    meta = {
        "generator": "shapes", "format_version": FORMAT_VERSION, "seed": seed, "n": n, "size": size,
        "noise": noise, "objects": [min_objects, max_objects], "splits": counts,
        "held_out": [list(p) for p in HELD_OUT], "compositional_split": COMPOSITIONAL_SPLIT,
        "shapes": list(SHAPES), "colors": list(COLORS), "sizes": list(SIZES), "answers": list(ANSWERS),
        "counts": {split: {t: len(rs) for t, rs in tasks.items()} for split, tasks in per_split.items()},
        "files": {
            "images": "images/{id:06d}.png",
            "jsonl": "{task}_{split}.jsonl for task in " + ", ".join(RECORD_FILES),
            "coco": "coco_captions_{split}.json", "karpathy": "dataset_shapes.json",
            "vqa": "vqa_{split}_questions.json, vqa_{split}_annotations.json",
            "folder": "classes/{split}/{shape}/ (single-object scenes, labelled by shape)",
        },
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    log.info("shapes: %d images (%dpx) in %s: %.1fs rendering, %.1fs total", n, size, out, t_render,
             time.perf_counter() - t0)
    return meta


def _remove_earlier_output(out: Path) -> None:
    """Delete what an earlier `generate` wrote in `out` (its meta.json says which splits), after
    checking that the folder holds nothing else; a foreign file refuses the whole overwrite."""
    try:
        splits = list(json.loads((out / "meta.json").read_text(encoding="utf-8"))["splits"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{out}/meta.json: unreadable ({exc}), so what the generator wrote here is unknown; "
                        "choose a new --out") from None
    names = {"meta.json", "dataset_shapes.json"}
    for split in splits:
        names |= {f"{task}_{split}.jsonl" for task in RECORD_FILES}
        names |= {f"coco_captions_{split}.json", f"vqa_{split}_questions.json", f"vqa_{split}_annotations.json"}
    split, shape = "|".join(re.escape(s) for s in splits), "|".join(SHAPES)
    our_file = re.compile(rf"images/\d{{6}}\.png|classes/({split})/({shape})/\d{{6}}\.png")
    our_dir = re.compile(rf"images|classes|classes/({split})|classes/({split})/({shape})")
    files, foreign = [], []
    for folder, subdirs, found in os.walk(out):
        base = Path(folder).relative_to(out).as_posix()
        for d in list(subdirs):
            rel = d if base == "." else f"{base}/{d}"
            if not our_dir.fullmatch(rel):  # a folder of the user's own, even an empty one
                foreign.append(rel + "/")
                subdirs.remove(d)
        for name in found:
            rel = name if base == "." else f"{base}/{name}"
            (files if rel in names or our_file.fullmatch(rel) else foreign).append(rel)
    if foreign:
        shown = ", ".join(sorted(foreign)[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DataError(f"{out}: --overwrite replaces only what the generator wrote, and this folder also holds "
                        f"{shown}; move those away or choose a new --out (nothing was deleted)")
    for rel in files:
        (out / rel).unlink()
    for folder, _, _ in sorted(os.walk(out), key=lambda w: -len(w[0])):  # now-empty folders, deepest first
        if Path(folder) != out and not any(Path(folder).iterdir()):
            Path(folder).rmdir()


def preview(out_png: str | os.PathLike, n: int = 8, seed: int = 0, size: int = 64, split: str = "train",
            columns: int = 4) -> None:
    """Save a PNG grid of `n` generated scenes with their first English caption under each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import textwrap

    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index, ax in zip(range(n), axes.flat):
        image, scene, text = make_example(index, seed, size, split)
        ax.imshow(image, interpolation="nearest")
        qa = text["qa"][index % len(text["qa"])]  # a different kind of question under each
        ax.set_title("\n".join(textwrap.wrap(text["captions"][0], 34)) + f"\nQ: {qa['question']}\nA: {qa['answer']}",
                     fontsize=7.5, loc="left")
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
