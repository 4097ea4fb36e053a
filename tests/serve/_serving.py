"""Helpers of the serving tests (importable by name, unlike conftest.py): a real uvicorn server
in a thread, and images as PNG bytes / data URLs."""
import base64
import io
import threading
import time

import httpx
import numpy as np
from PIL import Image


class Server:
    """`polymodal.serve.create_app` under a real uvicorn server in a thread, on a free port."""

    def __init__(self, settings, loader=None, wait_ready: bool = True):
        import uvicorn

        from polymodal.serve import create_app

        self.app = create_app(settings, loader)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        if wait_ready:
            self.wait_ready()

    @property
    def state(self):
        return self.app.state.polymodal

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while httpx.get(self.url + "/health").status_code != 200:
            assert time.monotonic() < deadline, httpx.get(self.url + "/health").text
            time.sleep(0.05)

    def get(self, path, **kw):
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path, **kw):
        return httpx.post(self.url + path, timeout=30, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def data_url(array: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png(array)).decode()
