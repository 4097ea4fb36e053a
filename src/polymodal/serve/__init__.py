"""Serving: one loaded model over HTTP (`polymodal serve`; docs/serving.md).

- `app.py`: the FastAPI app (task endpoints from the model's tasks, health, info, metrics, the page);
- `openai_compat.py`: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`;
- `batching.py`: dynamic batching on one inference thread; `guard.py`: the upload limit;
- `inputs.py`: images from uploads, base64 and data URLs, and the HTTP error of each bad input;
- `static/`: the web page at `/` (no external CDN).

FastAPI and uvicorn come with the `serve` extra (`pip install 'polymodal[serve]'`).
"""
from __future__ import annotations

import logging

from polymodal.errors import ConfigError
from polymodal.serve.settings import ServeSettings

log = logging.getLogger(__name__)


def _require() -> None:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart: uploads)
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"serving needs the `serve` extra ({exc.name} is missing); "
                          "install it with: pip install 'polymodal[serve]'") from None


def create_app(settings, loader=None):
    """The FastAPI app serving `settings.model` (see `polymodal.serve.app.create_app`)."""
    _require()
    from polymodal.serve.app import create_app as _create

    return _create(settings, loader)


def serve(settings, log_level: str = "info") -> None:
    """Run the server until interrupted; the model loads once it listens (GET /health says when).

    Raises:
        ConfigError: the model could not be loaded (the server stops at once), bad settings.
    """
    _require()
    import uvicorn

    from polymodal.serve.app import create_app as _create

    logging.getLogger("polymodal.serve").setLevel(log_level.upper())  # "model ... ready" for the user
    app = _create(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                                           timeout_graceful_shutdown=5))

    def failed(message: str) -> None:
        server.should_exit = True

    app.state.polymodal.on_load_error = failed
    try:
        server.run()
    except SystemExit:  # uvicorn's answer to an address it cannot bind (it has logged why)
        if server.started:
            raise
    if app.state.polymodal.error is not None:
        raise ConfigError(f"--model {settings.model}: {app.state.polymodal.error}")
    if not server.started:
        raise ConfigError(f"could not listen on {settings.host}:{settings.port} (in use, or not an address "
                          "of this machine); choose another --host / --port")


__all__ = ["ServeSettings", "create_app", "serve"]
