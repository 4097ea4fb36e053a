"""The OpenAI-compatible routes, in the shape vLLM, TGI and llama.cpp accept, so an existing
OpenAI client can talk to a polymodal model.

- `POST /v1/chat/completions`: messages whose content is a text or a list of `text` and
  `image_url` parts (images as data URLs or base64; nothing is fetched). The reply is the
  model's answer to the last user text when the model answers questions, else its caption of
  the image. `max_tokens`, `temperature` (0 or unset: greedy), `top_p` and `seed` set the
  generation; `stream: true` sends the reply as server-sent events (one content chunk, then
  `[DONE]`); `n` > 1 is refused (400).
- `POST /v1/embeddings`: `input` a text or a list of texts (an item that is a data URL of an
  image is embedded as an image), for models with a contrastive space; `encoding_format`
  `float` or `base64` (little-endian float32, what the official client asks for).
- `GET /v1/models`: the one model served.
"""
from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, Literal, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from polymodal.serve.inputs import HTTPProblem, decode_image, image_bytes


class ImageURL(BaseModel):
    url: str
    detail: Optional[str] = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: Optional[str] = None
    image_url: Optional[Union[ImageURL, str]] = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Optional[Union[str, list[ContentPart]]] = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI's other knobs (logprobs, user, ...) are accepted, unused
    model: Optional[str] = None
    messages: list[Message] = Field(..., min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1, le=256)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=256)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    seed: Optional[int] = None
    n: Optional[int] = Field(None, ge=1)
    stream: Optional[bool] = False


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: Optional[str] = None
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"


def _now() -> int:
    return int(time.time())


def _tokens(model, text: str) -> int | None:
    """How many tokens `text` is for the model's tokenizer (None when it has none)."""
    tok = getattr(model, "tokenizer", None) or getattr(getattr(model, "processor", None), "tokenizer", None)
    if tok is None or not text:
        return 0 if tok is not None else None
    try:
        return len(tok(text, add_special_tokens=False)["input_ids"])
    except Exception:  # noqa: BLE001  (usage is informative; it never fails a reply)
        return None


def _conversation(req: ChatRequest) -> tuple[list[tuple[str, str]], str | None]:
    """(the images [(name, url or base64)] of the messages, the last user text)."""
    images, question = [], None
    for i, msg in enumerate(req.messages):
        if isinstance(msg.content, str):
            if msg.role == "user" and msg.content.strip():
                question = msg.content
            continue
        texts = []
        for j, part in enumerate(msg.content or []):
            if part.type == "text" and part.text is not None:
                texts.append(part.text)
            elif part.type == "image_url" and part.image_url is not None:
                url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
                images.append((f"messages[{i}].content[{j}].image_url", url))
            elif part.type not in ("text", "image_url"):
                raise HTTPProblem(422, f"messages[{i}].content[{j}]: part type {part.type!r} is not supported; "
                                       "send `text` and `image_url` parts")
        if msg.role == "user" and " ".join(texts).strip():
            question = " ".join(texts).strip()
    return images, question


def mount_openai(app: FastAPI, state) -> None:
    """Add /v1/chat/completions, /v1/embeddings and /v1/models to `app` (state: app.State)."""

    @app.get("/v1/models", summary="OpenAI: the model served")
    async def models():
        return {"object": "list", "data": [{"id": state.settings.model, "object": "model", "created": _now(),
                                            "owned_by": "polymodal"}]}

    @app.post("/v1/chat/completions", summary="OpenAI chat completions: the model's answer or caption of an image")
    async def chat(req: ChatRequest):
        m = state.need("answer", "caption")
        if req.n not in (None, 1):
            raise HTTPProblem(400, f"n={req.n}: this server writes one choice per request; send n=1")
        images, question = _conversation(req)
        if not images:
            raise HTTPProblem(400, "no image in the messages; add a content part "
                                   "{\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,...\"}}")
        image = (await run_in_threadpool(
            lambda: [decode_image(image_bytes(url, name), name, state.settings.max_pixels) for name, url in images]))[-1]
        gen = {}
        if req.max_tokens or req.max_completion_tokens:
            gen["max_new_tokens"] = req.max_completion_tokens or req.max_tokens
        if req.temperature:  # 0 or unset: greedy, as the model's own default
            gen.update(do_sample=True, temperature=req.temperature)
            if req.top_p is not None:
                gen["top_p"] = req.top_p
        if req.seed is not None:
            gen["seed"] = req.seed
        key = tuple(sorted(gen.items()))
        if "answer" in m.tasks and question is not None:
            [content] = await state.run("answer", key, [(image, question)],
                                        lambda its, o: m.answer([i for i, _ in its], [q for _, q in its], **o), gen)
        elif "caption" in m.tasks:
            [content] = await state.run("caption", key, [image], lambda ims, o: m.caption(ims, **o), gen)
        else:
            raise HTTPProblem(400, "this model answers questions: add a text part with the question")
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", _now()
        prompt, completion = _tokens(m, question or ""), _tokens(m, content)
        usage = ({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
                 if prompt is not None and completion is not None else None)
        if req.stream:
            def events():
                head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": state.settings.model}
                yield f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {'role': 'assistant', 'content': content}, 'finish_reason': None}]})}\n\n"
                yield f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        out: dict[str, Any] = {"id": cid, "object": "chat.completion", "created": created,
                               "model": state.settings.model,
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                            "finish_reason": "stop", "logprobs": None}]}
        if usage is not None:
            out["usage"] = usage
        return out

    @app.post("/v1/embeddings", summary="OpenAI embeddings: texts (or image data URLs) in the model's shared space")
    async def embeddings(req: EmbeddingRequest):
        from polymodal.infer.inputs import check_text
        from polymodal.errors import DataError

        m = state.need("embed_texts")
        inputs = [req.input] if isinstance(req.input, str) else req.input
        if not inputs:
            raise HTTPProblem(422, "input: empty list; give a text or a list of texts")
        texts, pictures = [], []
        for i, x in enumerate(inputs):
            if isinstance(x, str) and x.startswith("data:image/"):
                pictures.append(i)
            else:
                try:
                    check_text(x, f"input[{i}]" if len(inputs) > 1 else "input")
                except DataError as exc:
                    raise HTTPProblem(422, str(exc)) from None
                texts.append(i)
        vectors: dict[int, np.ndarray] = {}
        if texts:
            out = await state.run("embed_texts", (), [inputs[i] for i in texts], lambda xs, _: list(m.embed_texts(xs)))
            vectors.update(zip(texts, out))
        if pictures:
            if "embed_images" not in m.tasks:
                raise HTTPProblem(400, f"this model (a {m.kind}) cannot embed images; it has: {state.offered()}")
            ims = await run_in_threadpool(lambda: [decode_image(image_bytes(inputs[i], f"input[{i}]"), f"input[{i}]",
                                                                state.settings.max_pixels) for i in pictures])
            out = await state.run("embed_images", (), ims, lambda xs, _: list(m.embed_images(xs)))
            vectors.update(zip(pictures, out))
        data = []
        for i in range(len(inputs)):
            v = np.asarray(vectors[i], dtype=np.float32)
            emb = base64.b64encode(v.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(_tokens(m, inputs[i]) or 0 for i in texts)
        return {"object": "list", "data": data, "model": state.settings.model,
                "usage": {"prompt_tokens": n, "total_tokens": n}}
