"""An ASGI middleware in front of every route: the request-size limit and the response counts.

A body over `max_bytes` gets 413 without being read when its Content-Length says so; a body
sent without a length (chunked) is counted as it arrives and refused the moment it passes the
limit, so no request makes the server hold more than `max_bytes` of it.
"""
from __future__ import annotations

import collections
import json

from polymodal.serve.inputs import HTTPProblem


class Guard:
    """Args: app: the ASGI app. max_bytes: the largest body. counts: a Counter of response statuses."""

    def __init__(self, app, max_bytes: int, counts: collections.Counter):
        self.app, self.max_bytes, self.counts = app, max_bytes, counts

    def _too_large(self) -> str:
        return (f"the request body is over the {self.max_bytes / 1024 / 1024:g} MB limit (--max-upload-mb); "
                "send a smaller image")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counted_send(message):
            if message["type"] == "http.response.start":
                self.counts[str(message["status"])] += 1
            await send(message)

        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            body = json.dumps({"error": {"message": self._too_large(), "type": "invalid_request_error",
                                         "code": 413}}).encode()
            await counted_send({"type": "http.response.start", "status": 413,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return

        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPProblem(413, self._too_large())  # the app's handler answers 413
            return message

        await self.app(scope, limited_receive, counted_send)
