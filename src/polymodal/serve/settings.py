"""The settings of `polymodal serve` (no web framework needed to read them)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from polymodal.errors import ConfigError


@dataclass
class ServeSettings:
    """What `polymodal serve` is told (docs/serving.md).

    Args:
        model: checkpoint dir, Hugging Face dir or recipe name.
        host, port: where to listen (127.0.0.1 unless told otherwise).
        max_batch: most items (images / texts) in one forward pass; 1: no dynamic batching.
        max_wait_ms: longest a request waits for others to join its batch.
        max_queue: most requests waiting or running; one more gets 503 with Retry-After.
        max_upload_mb: largest request body; a bigger one gets 413 before it is read.
        timeout_s: a request without an answer by then gets 504.
        max_pixels: largest image (width x height); a bigger one is refused from its header (422).
        max_images: most images in one request.
        index: a folder of images to index at start-up for `POST /retrieve`.
        device: torch device of the model.
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_upload_mb: float = 10.0
    timeout_s: float = 60.0
    max_pixels: int = 40_000_000
    max_images: int = 32
    index: Optional[str] = None
    device: str = "cpu"

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "max_pixels", "max_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_upload_mb", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.index is not None and not Path(self.index).is_dir():
            raise ConfigError(f"--index {self.index}: not a folder; give a folder of images to search")

    def limits(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("model", "host", "port", "index", "device")}
