"""Dataset specs and the readers behind them: every format becomes an iterable of plain records.

A spec is a string (`jsonl:DIR/train.jsonl`, `coco:captions.json:test`,
`vqa:questions.json,annotations.json`, `folder:DIR`, `wds:DIR/shards-{000..009}.tar`,
`hf:DIR`, `shapes:DIR[:TASK[:SPLIT]]`, or a bare path whose format is guessed), a YAML
string or file, or a dict such as

    {format: jsonl, path: data/train.jsonl, images: data/img, fields: {caption: text}}

(`fields` maps our field names to the user's keys). Dicts are checked strictly: an unknown key
is a ConfigError naming it. `open_dataset(spec, split)` returns a reader; readers are
registered in `polymodal.registry.DATASETS` under their format name.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from polymodal.data.fields import FIELDS, normalize_record
from polymodal.errors import ConfigError, DataError
from polymodal.jsonl import jsonl_rows
from polymodal.registry import DATASETS

log = logging.getLogger(__name__)

#: the environment variable that lets a `pipe:` WebDataset shard run its shell command (WdsReader)
ALLOW_PIPE = "POLYMODAL_ALLOW_PIPE"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class Entry:
    """One record as read, or why it could not be read. `where` is e.g. 'train.jsonl:12'."""

    where: str
    record: dict | None = None
    error: str | None = None
    root: Path | None = None  # folder that this record's relative image path starts from


class Reader:
    """Base of all readers: yields records (plain dicts) with the field names of `fields.FIELDS`.

    Subclasses implement `_raw()` (map-style: a list of Entries, read once) or, when
    `streaming`, `_stream(worker, num_workers)`. Records are finished here: the spec's field
    mapping is applied, relative image paths are resolved against `root`, derived fields filled.
    """

    streaming = False

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}  # ours -> theirs, set by open_dataset
        self.root: Path | None = None  # folder that relative image paths start from
        self._entries: list[Entry] | None = None

    # -- map-style ---------------------------------------------------------------------
    def _raw(self) -> list[Entry]:
        raise NotImplementedError

    def _all(self) -> list[Entry]:
        if self._entries is None:
            self._entries = self._raw()
        return self._entries

    def __len__(self) -> int:
        return len(self._all())

    def entry(self, i: int) -> Entry:
        """Entry i with its record finished (or an error saying what is wrong with it)."""
        e = self._all()[i]
        return self._finish(e) if e.record is not None else e

    def __getitem__(self, i: int) -> dict:
        e = self.entry(i)
        if e.error is not None:
            raise DataError(f"{e.where}: {e.error}")
        return e.record

    # -- both --------------------------------------------------------------------------
    def entries(self, worker: int = 0, num_workers: int = 1) -> Iterator[Entry]:
        """Every entry; with num_workers > 1 only this worker's share (disjoint, covering)."""
        if self.streaming:
            for e in self._stream(worker, num_workers):
                yield self._finish(e) if e.record is not None else e
        else:
            for i in range(worker, len(self), num_workers):
                yield self.entry(i)

    def __iter__(self) -> Iterator[dict]:
        for e in self.entries():
            if e.error is not None:
                raise DataError(f"{e.where}: {e.error}")
            yield e.record

    def _stream(self, worker: int, num_workers: int) -> Iterator[Entry]:
        raise NotImplementedError

    def _finish(self, e: Entry) -> Entry:
        rec = dict(e.record)
        for ours, theirs in self.fields.items():
            if theirs in rec:
                rec[ours] = rec.pop(theirs)
        img = rec.get("image")
        root = e.root or self.root
        if isinstance(img, str) and img and root is not None and not _is_url(img) and not os.path.isabs(img):
            rec["image"] = str(root / img)
        return Entry(e.where, normalize_record(rec))

    def describe(self) -> str:
        return type(self).__name__


def _is_url(s: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:(//|[a-z])", s)) and not re.match(r"^[A-Za-z]:[\\/]", s)


def _with_split(path: str, split: str | None, what: str) -> str:
    """Fill a `{split}` placeholder in a path; a split for a path without one is an error."""
    if "{split}" in path:
        if not split:
            raise ConfigError(f"{what}: path {path!r} has a {{split}} placeholder; name a split")
        return path.replace("{split}", split)
    return path


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the dataset spec's path")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


# ----------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------

@DATASETS.register("jsonl")
class JsonlReader(Reader):
    """JSON Lines manifests: one record per line.

    Args:
        path: a .jsonl file, a glob (`data/*.jsonl`), a folder holding `{split}.jsonl`, or a
            path with a `{split}` placeholder; or a list of these, read one after the other
            (records of several kinds in one run: referring expressions and detection phrases).
        split: which split (for folders and placeholders).
        images: folder that relative image paths start from (default: the manifest's folder).
    """

    def __init__(self, path: str | list, split: str | None = None, images: str | None = None):
        super().__init__()
        if isinstance(path, (list, tuple)):
            if not path:
                raise ConfigError("jsonl: path is an empty list; give one or more .jsonl files")
            self.files = [f for p in path for f in JsonlReader(p, split).files]
            self.images = Path(images) if images else None
            return
        p = _with_split(str(path), split, "jsonl")
        if Path(p).is_dir():
            if not split:
                found = sorted(f.stem for f in Path(p).glob("*.jsonl"))
                raise DataError(f"{p} is a folder; name a split (one of: {', '.join(found) or 'none found'})")
            p = str(Path(p) / f"{split}.jsonl")
        files = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
        if not files or not Path(files[0]).is_file():
            raise DataError(f"{p}: no such JSONL file; check the dataset spec's path")
        self.files = [Path(f) for f in files]
        self.images = Path(images) if images else None

    def _raw(self) -> list[Entry]:
        out = []
        for f in self.files:
            for n, rec in jsonl_rows(f, "records"):  # a bad line is one bad entry, not a bad file
                if isinstance(rec, DataError):
                    out.append(Entry(f"{f}:{n}", error=str(rec)))
                else:
                    out.append(Entry(f"{f}:{n}", rec, root=self.images or f.parent))
        return out

    def describe(self) -> str:
        return f"jsonl {', '.join(map(str, self.files))}"


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Records as JSON Lines (what JsonlReader reads), one compact object per line."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")


@DATASETS.register("coco")
class CocoReader(Reader):
    """COCO captions JSON (`captions_train2014.json`) or a Karpathy split file (`dataset_coco.json`).

    One record per image: `captions` (all its captions) and `caption` (the first).

    Args:
        path: the JSON file.
        split: train / val / test (Karpathy's `restval` counts as train). Taken from the
            Karpathy file, from `split_file`, or from a `split` key on each COCO image.
        images: folder that `file_name` (COCO) or `filepath/filename` (Karpathy) start from;
            default the JSON's folder.
        split_file: a Karpathy-style file giving the split of each image of a COCO file.
    """

    def __init__(self, path: str, split: str | None = None, images: str | None = None,
                 split_file: str | None = None):
        super().__init__()
        self.path = Path(_with_split(str(path), split, "coco"))
        self.split = split
        self.root = Path(images) if images else self.path.parent
        self.split_file = Path(split_file) if split_file else None

    def _raw(self) -> list[Entry]:
        doc = _read_json(self.path)
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise DataError(f"{self.path}: not a COCO captions file (no 'images' list)")
        want = {self.split, "restval"} if self.split == "train" else {self.split}
        out = []
        if "annotations" in doc:  # official COCO layout
            caps: dict[Any, list[str]] = defaultdict(list)
            for a in doc["annotations"]:
                caps[a.get("image_id")].append(a.get("caption"))
            splits = self._split_map() if self.split_file else None
            if self.split and splits is None and not any("split" in im for im in doc["images"]):
                raise DataError(f"{self.path}: has no split information; drop the split, or give "
                                "split_file: a Karpathy dataset_coco.json")
            for k, im in enumerate(doc["images"]):
                iid = im.get("id")
                if self.split:
                    s = splits.get(iid, splits.get(im.get("file_name"))) if splits is not None else im.get("split")
                    if s not in want:
                        continue
                rec = {"id": str(iid), "image_id": str(iid), "image": im.get("file_name"),
                       "captions": caps.get(iid, [])}
                if "split" in im:
                    rec["split"] = im["split"]
                out.append(Entry(f"{self.path}:images[{k}]", rec))
        else:  # Karpathy layout: images carry their sentences and split
            for k, im in enumerate(doc["images"]):
                if self.split and im.get("split") not in want:
                    continue
                iid = im.get("cocoid", im.get("imgid", k))
                name = "/".join(p for p in (im.get("filepath"), im.get("filename")) if p)
                rec = {"id": str(iid), "image_id": str(iid), "image": name or None, "split": im.get("split"),
                       "captions": [s.get("raw") for s in im.get("sentences", [])]}
                out.append(Entry(f"{self.path}:images[{k}]", rec))
        return out

    def _split_map(self) -> dict:
        doc = _read_json(self.split_file)
        out = {}
        for im in doc.get("images", []):
            if "cocoid" in im:
                out[im["cocoid"]] = im.get("split")
            out[im.get("filename")] = im.get("split")
        return out

    def describe(self) -> str:
        return f"coco {self.path}" + (f" [{self.split}]" if self.split else "")


def write_coco_captions(path: str | os.PathLike, records: list[dict], size: int, description: str,
                        version: str = "1") -> None:
    """Official COCO captions format (captions_train2014.json; what CocoReader reads).

    Args:
        records: {"id" (an integer string), "image" (relative to the json), "captions"} per image.
        size: the images' side in pixels. description, version: the file's `info`.
    """
    images, anns = [], []
    for r in records:
        iid = int(r["id"])
        images.append({"id": iid, "file_name": r["image"], "width": size, "height": size})
        for k, c in enumerate(r["captions"]):
            anns.append({"id": iid * 10 + k, "image_id": iid, "caption": c})
    doc = {"info": {"description": description, "version": version},
           "licenses": [], "type": "captions", "images": images, "annotations": anns}
    Path(path).write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))


def write_karpathy(path: str | os.PathLike, records_by_split: dict[str, list[dict]], dataset: str) -> None:
    """Karpathy-style split file (dataset_coco.json layout; CocoReader reads it): every image with
    its split and sentences. Records as for `write_coco_captions`."""
    images = []
    for split, records in records_by_split.items():
        for r in records:
            iid = int(r["id"])
            folder, _, name = r["image"].rpartition("/")
            sents = [{"raw": c, "tokens": re.findall(r"[a-z0-9]+", c.lower()), "imgid": iid, "sentid": iid * 10 + k}
                     for k, c in enumerate(r["captions"])]
            images.append({"filepath": folder, "filename": name, "imgid": iid, "cocoid": iid,
                           "split": split, "sentids": [s["sentid"] for s in sents], "sentences": sents})
    Path(path).write_text(json.dumps({"dataset": dataset, "images": images}, separators=(",", ":"),
                                     ensure_ascii=False))


@DATASETS.register("coco_instances")
class CocoInstancesReader(Reader):
    """COCO instance annotations (`instances_val2017.json`: `images`, `annotations` with `bbox`
    [x, y, width, height] and `category_id`, `categories` with `name`) as text-queried detection
    records: one per image and category, the category's name as the phrase (`text`), every box
    of that category in the image as `boxes` [x0, y0, x1, y1] (crowd regions left out).

    Args:
        path: the JSON file (a `{split}` placeholder takes the split).
        split: fills the placeholder.
        images: folder that `file_name` starts from (default: the JSON's folder).
        absent: "all": also a record for every category absent from an image (`boxes` empty,
            `phrase_kind` "none"), as COCO's evaluation asks every category of every image;
            "none": the categories present only.
    """

    def __init__(self, path: str, split: str | None = None, images: str | None = None, absent: str = "all"):
        super().__init__()
        if absent not in ("all", "none"):
            raise ConfigError(f"coco_instances: absent must be all or none, got {absent!r}")
        self.path = Path(_with_split(str(path), split, "coco_instances"))
        self.root = Path(images) if images else self.path.parent
        self.absent = absent

    def _raw(self) -> list[Entry]:
        doc = _read_json(self.path)
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations",
                                                                                      "categories")):
            raise DataError(f"{self.path}: not a COCO instances file (needs 'images', 'annotations' and "
                            "'categories' lists)")
        names = {c.get("id"): c.get("name") for c in doc["categories"]}
        boxes: dict[Any, dict[Any, list]] = defaultdict(lambda: defaultdict(list))
        for a in doc["annotations"]:
            bbox = a.get("bbox")
            if a.get("iscrowd") or not (isinstance(bbox, list) and len(bbox) == 4):
                continue
            x, y, w, h = bbox
            boxes[a.get("image_id")][a.get("category_id")].append([x, y, x + w, y + h])
        out = []
        for k, im in enumerate(doc["images"]):
            iid = im.get("id")
            cats = list(names) if self.absent == "all" else list(boxes[iid])
            for cid in cats:
                found = boxes[iid].get(cid, [])
                rec = {"id": f"{iid}_c{cid}", "image_id": str(iid), "image": im.get("file_name"),
                       "text": names.get(cid), "boxes": found, "phrase_kind": "category" if found else "none"}
                out.append(Entry(f"{self.path}:images[{k}]", rec))
        return out

    def describe(self) -> str:
        return f"coco_instances {self.path}"


@DATASETS.register("vqa")
class VqaReader(Reader):
    """VQAv2 question JSON plus (optional, absent for test-dev) annotation JSON.

    Args:
        path: "questions.json,annotations.json", or a list of one or two paths.
        split: fills a `{split}` placeholder in the paths.
        images: image folder (default: the questions file's folder).
        image_pattern: image path from `image_id` and `data_subtype`; default the file's own
            `image_pattern` key, else COCO's "COCO_{data_subtype}_{image_id:012d}.jpg".
    """

    def __init__(self, path: str | list, split: str | None = None, images: str | None = None,
                 image_pattern: str | None = None):
        super().__init__()
        paths = [p.strip() for p in path.split(",")] if isinstance(path, str) else [str(p) for p in path]
        if not 1 <= len(paths) <= 2:
            raise ConfigError(f"vqa path: give questions.json[,annotations.json], got {path!r}")
        paths = [Path(_with_split(p, split, "vqa")) for p in paths]
        self.questions, self.annotations = paths[0], (paths[1] if len(paths) > 1 else None)
        self.root = Path(images) if images else self.questions.parent
        self.image_pattern = image_pattern

    def _raw(self) -> list[Entry]:
        qdoc = _read_json(self.questions)
        if not isinstance(qdoc, dict) or not isinstance(qdoc.get("questions"), list):
            raise DataError(f"{self.questions}: not a VQA questions file (no 'questions' list)")
        anns = {}
        if self.annotations is not None:
            adoc = _read_json(self.annotations)
            if not isinstance(adoc, dict) or not isinstance(adoc.get("annotations"), list):
                raise DataError(f"{self.annotations}: not a VQA annotations file (no 'annotations' list)")
            anns = {a.get("question_id"): a for a in adoc["annotations"]}
        pattern = self.image_pattern or qdoc.get("image_pattern") or "COCO_{data_subtype}_{image_id:012d}.jpg"
        subtype = qdoc.get("data_subtype", "")
        out = []
        for k, q in enumerate(qdoc["questions"]):
            where = f"{self.questions}:questions[{k}]"
            iid, qid = q.get("image_id"), q.get("question_id")
            try:
                image = pattern.format(image_id=iid, data_subtype=subtype)
            except (ValueError, KeyError, IndexError) as exc:
                out.append(Entry(where, error=f"image_pattern {pattern!r} does not fit image_id {iid!r} ({exc})"))
                continue
            rec = {"id": str(qid), "image_id": str(iid), "image": image, "question": q.get("question")}
            a = anns.get(qid)
            if a is not None:
                rec["answers"] = [x.get("answer") for x in a.get("answers", [])]
                rec["answer"] = a.get("multiple_choice_answer")
                for key in ("question_type", "answer_type"):
                    if key in a:
                        rec[key] = a[key]
            elif self.annotations is not None:
                out.append(Entry(where, error=f"question {qid} has no annotation in {self.annotations}"))
                continue
            out.append(Entry(where, rec))
        return out

    def describe(self) -> str:
        return f"vqa {self.questions}" + (f", {self.annotations}" if self.annotations else "")


def write_vqa(out: str | os.PathLike, split: str, records: list[dict], description: str, image_pattern: str) -> None:
    """VQAv2 question and annotation files `vqa_{split}_questions.json` / `_annotations.json`
    (what VqaReader reads); every question gets 10 identical answers (exact ground truth).

    Args:
        records: {"id" ("<image id>_q<k>"), "image_id", "question", "answers", "question_type",
            "answer_type"} per question; the question id is image_id * 1000 + k.
        image_pattern: where the images are, relative to the files (not in VQAv2 itself).
    """
    out = Path(out)
    questions_, anns = [], []
    for r in records:
        iid, k = int(r["image_id"]), int(r["id"].rpartition("_q")[2])
        qid = iid * 1000 + k
        questions_.append({"image_id": iid, "question": r["question"], "question_id": qid})
        a = r["answers"][0]
        anns.append({"question_id": qid, "image_id": iid, "question_type": r["question_type"],
                     "answer_type": r["answer_type"], "multiple_choice_answer": a,
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]})
    common = {"info": {"description": description}, "license": {}, "data_type": "shapes", "data_subtype": split,
              "image_pattern": image_pattern}
    (out / f"vqa_{split}_questions.json").write_text(json.dumps(
        {**common, "task_type": "OpenEnded", "questions": questions_}, ensure_ascii=False, separators=(",", ":")))
    (out / f"vqa_{split}_annotations.json").write_text(json.dumps({**common, "annotations": anns}, ensure_ascii=False,
                                                                  separators=(",", ":")))


@DATASETS.register("folder")
class FolderReader(Reader):
    """Class-per-folder image tree: DIR/<label>/<image> (and DIR/<split>/<label>/<image>).

    Args:
        path: the root folder.
        split: a sub-folder of the root holding the class folders.
        extensions: file endings counted as images.
    """

    def __init__(self, path: str, split: str | None = None, extensions: list | None = None):
        super().__init__()
        root = Path(_with_split(str(path), split, "folder"))
        if split and "{split}" not in str(path):
            root = root / split
        if not root.is_dir():
            raise DataError(f"{root}: no such folder; a class-per-folder dataset is DIR/<label>/<image>")
        self.path = root
        self.extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower()
                                for e in (extensions or IMAGE_EXTENSIONS))
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataError(f"{root}: no class folders inside; expected DIR/<label>/<image>")

    def _raw(self) -> list[Entry]:
        out = []
        for label in self.classes:
            for f in sorted((self.path / label).rglob("*")):
                if f.suffix.lower() in self.extensions and f.is_file():
                    rel = f.relative_to(self.path)
                    out.append(Entry(str(f), {"id": str(rel.with_suffix("")), "image": str(f), "label": label}))
        return out

    def describe(self) -> str:
        return f"folder {self.path} ({len(self.classes)} classes)"


def write_class_tree(root: str | os.PathLike, split: str, images: list[tuple[str, str]]) -> None:
    """`classes/{split}/{label}/NAME` (what FolderReader reads) for (image path relative to
    `root`, label) pairs; hard links where possible, else copies."""
    import shutil

    root = Path(root)
    for image, label in images:
        dst = root / "classes" / split / label / Path(image).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(root / image, dst)
        except OSError:
            shutil.copyfile(root / image, dst)


@DATASETS.register("shapes")
class ShapesReader(JsonlReader):
    """A directory written by `polymodal data generate shapes`.

    Args:
        path: the generated directory (holds meta.json).
        split: train, val, test or comp (the compositional split); default train.
        task: which records: captions (one per image, with the scene), vqa, classify,
            ground or translate.
    """

    def __init__(self, path: str, split: str | None = None, task: str = "captions"):
        from polymodal.data.shapes import RECORD_FILES

        root = Path(path)
        meta_file = root / "meta.json"
        if not meta_file.is_file():
            raise DataError(f"{root}: no meta.json; not a shapes-world directory "
                            "(make one with `polymodal data generate shapes --out DIR`)")
        self.meta = _read_json(meta_file)
        if task not in RECORD_FILES:
            raise ConfigError(f"shapes task {task!r}: one of {', '.join(RECORD_FILES)}")
        split = split or "train"
        if split not in self.meta.get("splits", {}):
            raise DataError(f"{root}: no split {split!r}; it has {', '.join(self.meta.get('splits', {}))}")
        self.task, self.split = task, split
        super().__init__(str(root / f"{task}_{split}.jsonl"))

    def describe(self) -> str:
        return f"shapes {self.files[0].parent} [{self.task}, {self.split}]"


@DATASETS.register("hf")
class HfReader(Reader):
    """A Hugging Face `datasets` dataset saved with `save_to_disk` (needs `pip install datasets`).

    Args:
        path: the saved folder.
        split: which split of a DatasetDict (default: train, or the only one).
    """

    def __init__(self, path: str, split: str | None = None):
        super().__init__()
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise DataError("hf: the Hugging Face `datasets` package is not installed; "
                            "`pip install datasets`, or export the data to JSONL") from None
        if not Path(path).is_dir():
            raise DataError(f"{path}: no such folder; hf: wants a folder written by save_to_disk")
        self.path, self.split = Path(path), split

    def _raw(self) -> list[Entry]:
        import datasets

        ds = datasets.load_from_disk(str(self.path))
        if isinstance(ds, datasets.DatasetDict):
            names = list(ds)
            split = self.split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
            if split not in names:
                raise DataError(f"{self.path}: splits are {', '.join(names)}; name one")
            ds = ds[split]
        out = []
        for k, row in enumerate(ds):
            rec = dict(row)
            img = rec.get("image")
            if isinstance(img, dict):  # undecoded Image feature: {"bytes": ..., "path": ...}
                rec["image"] = img.get("bytes") or img.get("path")
            rec.setdefault("id", str(k))
            out.append(Entry(f"{self.path}[{k}]", rec))
        return out


@DATASETS.register("wds")
class WdsReader(Reader):
    """WebDataset tar shards, streamed (never loaded whole): for data larger than memory or disk.

    A sample is the tar members sharing a key: `KEY.json` (the record) plus `KEY.png`/`KEY.jpg`
    (the image bytes, becoming `image`); plain `KEY.txt` (caption) and `KEY.cls` (label)
    samples, as in LAION-style shards, are read too.

    A `pipe:` shard runs a shell command, so it is opt-in: only when the user running polymodal
    sets `POLYMODAL_ALLOW_PIPE=1` in the environment. Not a config key or a spec option on
    purpose: configs and manifests travel (downloaded with a dataset or a recipe), and a file
    someone else wrote must not be able to run commands on this machine by being read.

    Args:
        path: shard paths or URLs with brace ranges, e.g. `shards/train-{000000..000009}.tar`,
            `pipe:curl -s https://host/train-{0..9}.tar` (anything webdataset's gopen opens).
        split: fills a `{split}` placeholder in the path.
    """

    streaming = True

    def __init__(self, path: str, split: str | None = None):
        super().__init__()
        import braceexpand

        p = _with_split(str(path), split, "wds")
        self.urls = [u for part in p.split("::") for u in braceexpand.braceexpand(part)]
        pipes = [u for u in self.urls if u.startswith("pipe:")]
        if pipes and os.environ.get(ALLOW_PIPE) != "1":
            raise ConfigError(f"{p}: a pipe: shard runs the shell command {pipes[0][5:].strip()!r}; polymodal runs "
                              f"such commands only when you set {ALLOW_PIPE}=1 in the environment of this command "
                              "(a config or manifest cannot allow it); check the command first")
        local = [u for u in self.urls if not _is_url(u)]
        if local and not any(os.path.exists(u) for u in local):
            raise DataError(f"{p}: no shard found; check the path (brace ranges like {{000..009}} are expanded)")

    def __len__(self) -> int:
        raise TypeError("a WebDataset is streamed; its length is unknown until read")

    def _stream(self, worker: int, num_workers: int) -> Iterator[Entry]:
        # Whole shards per worker when there are enough of them; else every worker reads every
        # shard and keeps every num_workers-th sample.
        if len(self.urls) >= num_workers:
            urls, keep = self.urls[worker::num_workers], None
        else:
            urls, keep = self.urls, (worker, num_workers)
        n = 0
        for url in urls:
            for e in _tar_samples(url):
                if keep is None or n % keep[1] == keep[0]:
                    yield e
                n += 1

    def describe(self) -> str:
        return f"wds {len(self.urls)} shard(s) {self.urls[0]}…"


_IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif", "ppm")


def _tar_samples(url: str) -> Iterator[Entry]:
    """Entries of one shard, grouped by key; a broken shard ends in one error entry."""
    try:
        stream = open(url, "rb") if not _is_url(url) else __import__("webdataset").gopen(url, "rb")
    except OSError as exc:
        yield Entry(url, error=f"cannot open shard ({exc})")
        return
    key, parts = None, {}
    try:
        with stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                m = re.match(r"^((?:.*/|)[^./]+)\.([^/]*)$", member.name)
                if not m:
                    continue
                k, ext = m.group(1), m.group(2).lower()
                if k != key and parts:
                    yield _sample_entry(url, key, parts)
                    parts = {}
                key = k
                parts[ext] = tar.extractfile(member).read()
            if parts:
                yield _sample_entry(url, key, parts)
                parts = {}
            # tarfile ends quietly at a garbled header; anything but zero padding left means
            # that part of the shard was lost
            left = 0
            while chunk := tar.fileobj.read(1 << 16):
                left += len(chunk.strip(b"\0"))
            if left:
                yield Entry(f"{url}:{key or 'start'}", error=f"unreadable data after this sample; "
                                                            f"about {left} bytes of the shard skipped")
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield Entry(f"{url}:{key or 'start'}", error=f"broken shard, rest skipped ({exc})")


def _sample_entry(url: str, key: str, parts: dict[str, bytes]) -> Entry:
    where = f"{url}:{key}"
    rec: dict[str, Any] = {}
    if "json" in parts:
        try:
            rec = json.loads(parts["json"])
        except ValueError as exc:
            return Entry(where, error=f"{key}.json is not valid JSON ({exc})")
        if not isinstance(rec, dict):
            return Entry(where, error=f"{key}.json must hold an object")
    for ext in _IMAGE_KEYS:
        if ext in parts:
            rec["image"] = parts[ext]
            break
    for ext, field in (("txt", "caption"), ("caption", "caption"), ("cls", "label")):
        if ext in parts and field not in rec:
            text = parts[ext].decode("utf-8", "replace").strip()
            rec[field] = int(text) if ext == "cls" and text.lstrip("-").isdigit() else text
    rec.setdefault("id", key.rpartition("/")[2])
    return Entry(where, rec)


# ----------------------------------------------------------------------------------------
# Specs
# ----------------------------------------------------------------------------------------

def parse_spec(spec: str | os.PathLike | dict) -> dict:
    """A spec string, YAML text, YAML file or dict -> a dict with at least `format` and `path`."""
    if isinstance(spec, dict):
        return dict(spec)
    s = str(spec).strip()
    if not s:
        raise ConfigError("empty dataset spec; e.g. jsonl:data/train.jsonl or shapes:DIR")
    if "\n" in s or s.startswith("{"):
        return _yaml_spec(s, "dataset spec")
    if s.endswith((".yaml", ".yml")) and Path(s).is_file():
        return _yaml_spec(Path(s).read_text(), s)
    fmt, sep, rest = s.partition(":")
    if sep and fmt in DATASETS:
        if fmt in ("coco", "hf", "coco_instances"):
            path, split = _split_tail(rest, 1)
            return {"format": fmt, "path": path, **({"split": split[0]} if split else {})}
        if fmt == "shapes":
            path, tail = _split_tail(rest, 2)
            out = {"format": fmt, "path": path}
            if tail:
                out["task"] = tail[0]
            if len(tail) > 1:
                out["split"] = tail[1]
            return out
        return {"format": fmt, "path": rest}
    if sep and re.fullmatch(r"[a-z_]+", fmt) and fmt not in ("pipe", "http", "https", "s3", "gs", "file"):
        raise ConfigError(f"dataset spec {s!r}: unknown format {fmt!r}; one of {', '.join(DATASETS.names())}")
    return {"format": guess_format(s), "path": s}


def _split_tail(rest: str, most: int) -> tuple[str, list[str]]:
    """'DIR:a:b' -> ('DIR', ['a', 'b']): up to `most` trailing ':name' parts that are plain names."""
    parts = rest.split(":")
    tail = []
    while len(parts) > 1 and len(tail) < most and re.fullmatch(r"[A-Za-z0-9_\-]+", parts[-1]):
        tail.insert(0, parts.pop())
    return ":".join(parts), tail


def _yaml_spec(text: str, where: str) -> dict:
    from polymodal.yamlfile import load_yaml

    doc = load_yaml(text, where)
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: a dataset spec block must be a mapping with format: and path:")
    return doc


def guess_format(path: str) -> str:
    """The format of a bare path: .jsonl, shards (.tar), a shapes/HF/class folder, COCO/VQA JSON."""
    if path.endswith(".jsonl") or "*.jsonl" in path:
        return "jsonl"
    if ".tar" in path:
        return "wds"
    p = Path(path)
    if p.is_dir():
        if (p / "meta.json").is_file():
            return "shapes"
        if any((p / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "hf"
        return "folder"
    if path.endswith(".json") and p.is_file():
        with open(p, encoding="utf-8", errors="replace") as f:
            head = f.read(1 << 16)
        if '"questions"' in head:
            return "vqa"
        return "coco"
    raise ConfigError(f"cannot tell the format of {path!r}; write it as FORMAT:PATH with FORMAT one of "
                      f"{', '.join(DATASETS.names())}")


def open_dataset(spec: str | os.PathLike | dict, split: str | None = None, where: str = "dataset spec",
                 shapes_file: str | None = None) -> Reader:
    """Open a dataset spec and return its reader: an iterable of plain records.

    Map-style readers (every format but wds) also have len() and [i].

    Args:
        spec: see the module docstring.
        split: which split, when the spec does not name one (naming a different one is an error).
        where: where the spec came from, for error messages (e.g. "train.yaml: data.train").
        shapes_file: the record file a shapes-world spec that names none (`shapes:DIR`, or just
            the directory) reads: a task's `shapes_file` (polymodal.tasks), e.g. "vqa".
    """
    d = parse_spec(spec)
    if shapes_file is not None and d.get("format") == "shapes" and "task" not in d:
        d["task"] = shapes_file
    fmt = d.pop("format", None)
    if not fmt:
        raise ConfigError(f"{where}: missing 'format'; one of {', '.join(DATASETS.names())}")
    if fmt not in DATASETS:
        raise ConfigError(f"{where}.format: unknown format {fmt!r}; one of {', '.join(DATASETS.names())}")
    if "path" not in d:
        raise ConfigError(f"{where}: missing 'path'")
    fields = d.pop("fields", None) or {}
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}.fields: a mapping from our field names to yours, e.g. {{caption: text}}")
    for ours, theirs in fields.items():
        if ours not in FIELDS:
            raise ConfigError(f"{where}.fields.{ours}: unknown field; ours are {', '.join(FIELDS)}")
        if not isinstance(theirs, str):
            raise ConfigError(f"{where}.fields.{ours}: the name of your key (a string), got {theirs!r}")
    if split is not None:
        if d.get("split") not in (None, split):
            raise ConfigError(f"{where}: asks for split {split!r} but the spec names split {d['split']!r}")
        d["split"] = split
    reader = DATASETS.build({"type": fmt, **d}, where=where)
    reader.fields = dict(fields)
    return reader


def record_to_json(rec: dict) -> dict:
    """A record made JSON-safe: image bytes/PIL images are dropped (they live in their own file)."""
    return {k: v for k, v in rec.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))
            and not k.startswith("_")}


__all__ = ["Entry", "Reader", "JsonlReader", "CocoReader", "CocoInstancesReader", "VqaReader", "FolderReader", "ShapesReader",
           "HfReader", "WdsReader", "parse_spec", "guess_format", "open_dataset", "record_to_json",
           "IMAGE_EXTENSIONS", "write_jsonl", "write_coco_captions", "write_karpathy", "write_vqa", "write_class_tree"]
