"""A retrieval index over a folder of images, embedded once and reused while nothing changes.

The index lives in the user's cache, never in the image folder (which may be read-only, shared
or under version control): `index_dir()` (`$POLYMODAL_CACHE/index`, else
`$XDG_CACHE_HOME/polymodal/index`, else `~/.cache/polymodal/index`) holds
`<folder key>-<model key>.safetensors` (embeddings) plus a `.json` listing (relative path,
size, mtime) of what was embedded. A changed, added or removed file makes the listing differ
and the folder is embedded again, one batch of images at a time. Search is exact (a matrix
product) unless `faiss-cpu` is installed, in which case a FAISS inner-product index is used;
both give the same ranking on normalised embeddings.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from polymodal.data.images import load_image
from polymodal.errors import DataError
from polymodal.infer.inputs import IMAGE_SUFFIXES, check_text

log = logging.getLogger(__name__)


def model_key(source: str) -> str:
    """A short key that changes when the model at `source` changes (path + weight files' stat)."""
    p = Path(source)
    parts = [str(p.resolve()) if p.exists() else source]
    if p.is_dir():
        for f in sorted(p.iterdir()):
            if f.suffix in (".safetensors", ".bin", ".json"):
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def index_dir() -> Path:
    """Where image indexes are kept: `$POLYMODAL_CACHE/index`, else the user's cache folder."""
    if os.environ.get("POLYMODAL_CACHE"):
        return Path(os.environ["POLYMODAL_CACHE"]).expanduser() / "index"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "polymodal" / "index"


def _listing(folder: Path) -> list[list]:
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    return [[str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


class ImageIndex:
    """Embeddings of every readable image in a folder, with the unreadable ones listed apart."""

    def __init__(self, folder: Path, paths: list[str], embeddings: torch.Tensor, failed: dict[str, str]):
        self.folder, self.paths, self.embeddings, self.failed = folder, paths, embeddings, failed
        self._faiss = None
        try:
            import faiss  # optional

            self._faiss = faiss.IndexFlatIP(embeddings.shape[1])
            self._faiss.add(embeddings.numpy().astype("float32"))
        except ImportError:
            pass

    @classmethod
    def open(cls, folder: str | os.PathLike, model, key: str, batch_size: int = 64) -> tuple["ImageIndex", bool]:
        """Load the folder's index for this model, or build and save it. Returns (index, reused)."""
        from safetensors.torch import load_file, save_file

        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of images")
        listing = _listing(folder)
        folder_key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]
        base = index_dir() / f"{folder_key}-{key}"
        meta_file, emb_file = base.with_suffix(".json"), base.with_suffix(".safetensors")
        if meta_file.is_file() and emb_file.is_file():
            try:
                meta = json.loads(meta_file.read_text())
                if meta.get("listing") == listing:
                    emb = load_file(str(emb_file))["embeddings"]
                    return cls(folder, meta["paths"], emb, meta.get("failed", {})), True
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable index %s (%s); rebuilding", base, exc)
        paths, chunks, failed = [], [], {}
        for batch in (listing[i:i + batch_size] for i in range(0, len(listing), batch_size)):
            images = []  # decoded one batch at a time: memory holds a batch, not the folder
            for rel, _, _ in batch:
                try:
                    images.append(load_image(folder / rel))
                    paths.append(rel)
                except DataError as exc:
                    failed[rel] = str(exc)
            if images:
                chunks.append(model.embed_images(images))
        if not paths:
            raise DataError(f"{folder}: no readable images to index"
                            + (f" ({len(failed)} unreadable, e.g. {next(iter(failed.values()))})" if failed else ""))
        emb = torch.from_numpy(np.concatenate(chunks).astype(np.float32))
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            tmp_emb, tmp_meta = Path(f"{emb_file}.tmp"), Path(f"{meta_file}.tmp")
            save_file({"embeddings": emb}, str(tmp_emb))
            tmp_meta.write_text(json.dumps({"folder": str(folder.resolve()), "listing": listing, "paths": paths,
                                            "failed": failed}))
            os.replace(tmp_emb, emb_file)
            os.replace(tmp_meta, meta_file)
        except OSError as exc:  # an unwritable cache costs the reuse, not the search
            log.warning("could not save the index in %s (%s); it will be built again next time", base.parent, exc)
        return cls(folder, paths, emb, failed), False

    def search(self, query: np.ndarray, top_k: int = 5) -> list[dict]:
        """Best `top_k` images for a normalised query embedding (E,): [{image, score, rank}]."""
        k = min(top_k, len(self.paths))
        query = torch.as_tensor(np.asarray(query, dtype=np.float32))
        if self._faiss is not None:
            scores, idx = self._faiss.search(query.reshape(1, -1).numpy().astype("float32"), k)
            pairs = zip(idx[0].tolist(), scores[0].tolist())
        else:
            s = self.embeddings @ query.float()
            top = torch.topk(s, k)
            pairs = zip(top.indices.tolist(), top.values.tolist())
        return [{"image": str(self.folder / self.paths[i]), "score": float(v), "rank": r + 1}
                for r, (i, v) in enumerate(pairs)]


def query_embedding(model, query: str) -> np.ndarray:
    """A text query, or an image query when `query` is the path of an existing image file."""
    p = Path(query)
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        return model.embed_images([load_image(p)])[0]
    return model.embed_texts([check_text(query, "query")])[0]
