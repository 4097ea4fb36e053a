"""The HTTP application: task endpoints, health and info, the OpenAI-compatible routes, the web page.

`create_app(settings)` builds a FastAPI app around one loaded model. The model (and the image
index of `--index DIR`) loads on the inference thread after the server starts, so `GET /health`
says 503 "loading" until it is ready, and 200 after. Every task endpoint asks the loaded model
which methods it has (`LoadedModel.tasks`, which the task registry fills), so a model serves what
its tasks give it and nothing is listed per model here:

| endpoint                 | LoadedModel method        | body (JSON, or multipart with image files)           |
|--------------------------|---------------------------|-------------------------------------------------------|
| `POST /caption`          | `caption`                 | image(s), generation options                          |
| `POST /answer`           | `answer`                  | image(s), `question` (or `questions`, one per image)  |
| `POST /classify`         | `classify`                | image(s), `labels` (zero-shot) or `text` (a fusion classifier's statement) |
| `POST /embed`            | `embed_images`, `embed_texts` | `images` and / or `texts`                         |
| `POST /retrieve`         | `retrieve` (+ the index)  | `query` (a text) or an image, `top_k`                 |
| `POST /translate`        | `translate`               | image(s), `text` (or `texts`)                         |
| `POST /{method}`         | any other task's method (`ground`, `explain`, ...) | image(s), `text`(s), options |

Requests of one kind share forward passes (`batching.Batcher`). Errors are JSON
`{"error": {"message", "type", "code"}}` and never carry a traceback (docs/serving.md lists them).
"""
from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import io
import json
import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from polymodal.errors import ConfigError, DataError, PolymodalError, UnsupportedTaskError
from polymodal.serve.batching import Batcher, Job, QueueFull
from polymodal.serve.settings import ServeSettings
from polymodal.serve.inputs import HTTPProblem, decode_image, image_bytes

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


# ---------------------------------------------------------------------------------------- bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: Optional[str] = Field(None, description="one image: base64 or a data URL (data:image/png;base64,...)")
    images: Optional[list[str]] = Field(None, description="several images, each base64 or a data URL")


class Generation(_Body):
    max_new_tokens: Optional[int] = Field(None, ge=1, le=256)
    num_beams: Optional[int] = Field(None, ge=1, le=16)
    do_sample: Optional[bool] = None
    temperature: Optional[float] = Field(None, gt=0)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    seed: Optional[int] = None

    def generation(self) -> dict:
        names = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "seed")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}


class CaptionBody(Generation):
    pass


class AnswerBody(Generation):
    question: Optional[str] = Field(None, description="the question, asked of every image")
    questions: Optional[list[str]] = Field(None, description="one question per image")


class TranslateBody(Generation):
    text: Optional[str] = Field(None, description="the sentence to translate (every image)")
    texts: Optional[list[str]] = Field(None, description="one sentence per image")


def _split_labels(value):
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str) and "," in value[0]:
        return [x.strip() for x in value[0].split(",") if x.strip()]
    return value


class ClassifyBody(_Body):
    labels: Optional[list[str]] = Field(None, description="class names (zero-shot): a list, or one comma-separated text")
    template: Optional[str] = Field(None, description="zero-shot prompt with {} for the label (default: the model's)")
    text: Optional[str] = Field(None, description="a fusion classifier's statement about every image")
    texts: Optional[list[str]] = None

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value):
        return _split_labels(value)


class EmbedBody(_Body):
    texts: Optional[list[str]] = Field(None, description="texts to embed")
    text: Optional[str] = None


class RetrieveBody(_Body):
    query: Optional[str] = Field(None, description="a text query (or send an image to search by image)")
    top_k: int = Field(5, ge=1, le=1000)


class TaskBody(_Body):
    """Any other task (`ground`, `explain`, ...): images, an optional text per image, and the
    keyword options of the task's method."""

    model_config = ConfigDict(extra="allow")
    text: Optional[str] = None
    texts: Optional[list[str]] = None


# ----------------------------------------------------------------------------------------- state
class State:
    """The server's model, index and batcher; `ready` once the model (and index) are loaded."""

    def __init__(self, settings: ServeSettings, loader: Callable[[], Any]):
        self.settings, self.loader = settings, loader
        self.batcher = Batcher(settings.max_batch, settings.max_wait_ms, settings.max_queue)
        self.model = self.index = self.error = None
        self.ready = False
        self.on_load_error: Callable[[str], None] | None = None

    def load(self) -> None:
        """Load the model, then index the --index folder (runs on the inference thread)."""
        model = self.loader()
        if self.settings.index:
            from polymodal.infer.index import ImageIndex, model_key

            if "embed_images" not in model.tasks:
                raise ConfigError(f"--index: this model (a {model.kind}) cannot embed images, so it cannot "
                                  f"search a folder; it has: {', '.join(model.tasks) or 'nothing'}")
            self.index, reused = ImageIndex.open(self.settings.index, model, model_key(self.settings.model))
            log.info("index of %s %s: %d images", self.settings.index, "reused" if reused else "built",
                     len(self.index.paths))
        self.model = model

    def need(self, *methods: str) -> Any:
        """The model, when ready and offering one of `methods`; else the HTTPProblem a caller gets."""
        if self.error is not None:
            raise HTTPProblem(503, f"the model could not be loaded: {self.error}", "server_error")
        if not self.ready:
            raise HTTPProblem(503, "the model is still loading; retry shortly", "server_error", {"Retry-After": "2"})
        if not any(m in self.model.tasks for m in methods):
            raise HTTPProblem(400, f"this model (a {self.model.kind}) cannot {methods[0].replace('_', ' ')}; "
                                   f"it has: {self.offered()}")
        return self.model

    def endpoints(self) -> dict[str, str]:
        """The model's methods -> the endpoint that runs each."""
        out = {}
        for m in (self.model.tasks if self.model is not None else ()):
            out[m] = ENDPOINT_OF.get(m, f"/{m}")
        return out

    def offered(self) -> str:
        eps = self.endpoints()
        return ", ".join(f"{m} (POST {e})" for m, e in eps.items()) or "nothing"

    async def run(self, method: str, key: tuple, items: list, call: Callable[[list, dict], list],
                  options: dict | None = None) -> list:
        """Queue `items` for one batched `call` and wait; queue full / timeout become HTTPProblems."""
        try:
            return await self.batcher.submit(Job((method, key), items, call, options or {}), self.settings.timeout_s)
        except QueueFull as exc:
            raise HTTPProblem(503, str(exc), "server_error", {"Retry-After": str(exc.retry_after)}) from None
        except asyncio.TimeoutError:
            raise HTTPProblem(504, f"no answer within --timeout-s {self.settings.timeout_s:g} s; the server is "
                                   "busy or the request is large: retry, or send fewer images", "timeout") from None
        except UnsupportedTaskError as exc:
            raise HTTPProblem(400, f"{exc}") from None
        except (DataError, ConfigError, ValueError) as exc:
            raise HTTPProblem(422, str(exc)) from None


#: methods with an endpoint of another name
ENDPOINT_OF = {"embed_images": "/embed", "embed_texts": "/embed", "answer": "/answer", "caption": "/caption",
               "classify": "/classify", "retrieve": "/retrieve", "translate": "/translate"}


# --------------------------------------------------------------------------------- reading bodies
async def read_body(request: Request, model: type[BaseModel], state: State) -> tuple[BaseModel, list]:
    """(validated body, decoded images) from JSON or multipart form data.

    JSON carries images as base64 / data URLs in `image` / `images`; a multipart form carries them
    as files (any field name) and the other fields as form values.
    """
    ctype = request.headers.get("content-type", "")
    raw: list[tuple[str, Any]] = []  # (name for messages, bytes or text)
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=state.settings.max_images + 1, max_fields=1000)
        fields: dict[str, Any] = {}
        for key in form.keys():
            values = form.getlist(key)
            files = [v for v in values if hasattr(v, "read")]
            for f in files:
                raw.append((f.filename or key, await f.read()))
            texts = [v for v in values if not hasattr(v, "read")]
            if texts:
                fields[key] = texts if len(texts) > 1 or _is_list(model, key) else texts[0]
        data = fields
    elif ctype.startswith("application/json") or not ctype:
        try:
            data = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPProblem(422, f"the body is not valid JSON ({exc}); send a JSON object") from None
        if not isinstance(data, dict):
            raise HTTPProblem(422, "the body must be a JSON object, e.g. {\"image\": \"<base64>\"}")
    else:
        raise HTTPProblem(415, f"content type {ctype.split(';')[0]!r} is not supported; send application/json "
                               "or multipart/form-data")
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    if body.image is not None:
        raw.insert(0, ("image", body.image))
    for i, s in enumerate(body.images or []):
        raw.append((f"images[{i}]", s))
    if len(raw) > state.settings.max_images:
        raise HTTPProblem(422, f"{len(raw)} images in one request; at most {state.settings.max_images} "
                               "(--max-images); split the request")
    images = await run_in_threadpool(_decode_all, raw, state.settings.max_pixels)
    return body, images


def _is_list(model: type[BaseModel], key: str) -> bool:
    field = model.model_fields.get(key)
    return field is not None and "list" in str(field.annotation)


def _decode_all(raw: list[tuple[str, Any]], max_pixels: int) -> list:
    return [decode_image(v if isinstance(v, bytes) else image_bytes(v, name), name, max_pixels) for name, v in raw]


def _need_images(images: list, what: str = "image") -> None:
    if not images:
        raise RequestValidationError([{"loc": ("body", what), "msg": "Field required: send an image (a multipart "
                                       "file, or base64 / a data URL in `image`)", "type": "missing"}])


def _per_image(one: Optional[str], many: Optional[list[str]], n: int, name: str, required: bool = True):
    """One text per image: `many` (as many as images) or `one` repeated; DataError on a bad text."""
    from polymodal.infer.inputs import check_text

    if many is not None:
        if len(many) != n:
            raise HTTPProblem(422, f"{len(many)} {name}s for {n} images; give one {name} per image")
        texts = many
    elif one is not None:
        texts = [one] * n
    elif required:
        raise RequestValidationError([{"loc": ("body", name), "msg": "Field required", "type": "missing"}])
    else:
        return None
    try:
        return [check_text(t, name if len(texts) == 1 else f"{name} #{i}") for i, t in enumerate(texts)]
    except DataError as exc:
        raise HTTPProblem(422, str(exc)) from None


def jsonable(value: Any) -> Any:
    """A task's result as JSON: arrays as lists, PIL images as PNG data URLs, dataclasses as dicts."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return png_data_url(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):  # a torch tensor
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return jsonable(asdict(value))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def first_picture(result: Any, image=None):
    """A PNG-able picture in a task's result: a PIL image, or a 2-D heat map drawn over `image`."""
    from PIL import Image

    if isinstance(result, Image.Image):
        return result
    if hasattr(result, "__dataclass_fields__"):  # e.g. an Explanation: its fields in order, the map first
        result = {f: getattr(result, f) for f in result.__dataclass_fields__}
    if isinstance(result, dict):
        for v in result.values():
            found = first_picture(v, image)
            if found is not None:
                return found
        return None
    arr = np.asarray(result) if isinstance(result, (np.ndarray, list)) or hasattr(result, "numpy") else None
    if arr is not None and arr.ndim == 2 and np.issubdtype(arr.dtype, np.number) and min(arr.shape) > 1:
        return heat_overlay(arr, image)
    return None


def heat_overlay(heat: np.ndarray, image=None):
    """A heat map (h, w) as a PNG-able image, blended over `image` when given."""
    from matplotlib import colormaps
    from PIL import Image

    h = np.nan_to_num(heat.astype(np.float64))
    h = (h - h.min()) / (np.ptp(h) or 1.0)
    rgb = (colormaps["jet"](h)[..., :3] * 255).astype(np.uint8)  # (h, w, 3)
    size = image.size if image is not None else (max(64, heat.shape[1] * 8), max(64, heat.shape[0] * 8))
    overlay = Image.fromarray(rgb).resize(size, Image.BILINEAR)
    return Image.blend(image.convert("RGB"), overlay, 0.45) if image is not None else overlay


# ------------------------------------------------------------------------------------------- app
def create_app(settings: ServeSettings, loader: Callable[[], Any] | None = None) -> FastAPI:
    """The FastAPI app serving `settings.model`.

    Args:
        settings: the server's settings (limits, batching, index).
        loader: returns the LoadedModel (default: `polymodal.load(settings.model)`); it runs on
            the inference thread after the server starts.
    """
    from polymodal.serve.guard import Guard
    from polymodal.serve.openai_compat import mount_openai

    if loader is None:
        def loader():
            import polymodal

            return polymodal.load(settings.model, device=settings.device)

    state = State(settings, loader)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        loading = asyncio.get_running_loop().create_task(_load(state))
        try:
            yield
        finally:
            loading.cancel()
            await state.batcher.stop()

    app = FastAPI(title="polymodal", version=_version(), lifespan=lifespan,
                  description="A polymodal model served over HTTP: its task endpoints, an OpenAI-compatible "
                              "`/v1/chat/completions` and `/v1/embeddings`, and a web page at `/`.")
    app.state.polymodal = state
    app.state.guard_counts = collections.Counter()  # responses by status
    app.add_middleware(Guard, max_bytes=int(settings.max_upload_mb * 1024 * 1024), counts=app.state.guard_counts)
    _error_handlers(app)

    # ----------------------------------------------------------------------- service routes
    @app.get("/health", summary="200 when the model is loaded and ready, 503 while it loads")
    async def health():
        if state.error is not None:
            return JSONResponse({"status": "failed", "error": state.error}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        return {"status": "ok", "model": settings.model}

    @app.get("/info", summary="the model, its tasks and endpoints, the limits and batching statistics")
    async def info():
        m = state.model
        return {"model": settings.model, "ready": state.ready, "error": state.error,
                "kind": getattr(m, "kind", None), "tasks": list(getattr(m, "tasks", ())),
                "endpoints": state.endpoints(),
                "openai": {"chat": bool(m is not None and {"caption", "answer"} & set(m.tasks)),
                           "embeddings": bool(m is not None and "embed_texts" in m.tasks)},
                "index": ({"folder": str(state.index.folder), "images": len(state.index.paths),
                           "unreadable": len(state.index.failed)} if state.index is not None else None),
                "limits": settings.limits(), "batching": {**state.batcher.stats.as_dict(),
                                                          "in_flight": state.batcher.queued},
                "responses": app.state.guard_counts}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus text: batches, items, queue, responses")
    async def metrics():
        s = state.batcher.stats.as_dict()
        lines = [f"polymodal_ready {int(state.ready)}", f"polymodal_in_flight {state.batcher.queued}",
                 f"polymodal_batches_total {s['batches']}", f"polymodal_batch_items_total {s['items']}",
                 f"polymodal_batch_requests_total {s['jobs']}", f"polymodal_batch_max_items {s['max_batch_seen']}",
                 f"polymodal_rejected_queue_full_total {s['rejected_queue_full']}",
                 f"polymodal_timeouts_total {s['timeouts']}", f"polymodal_inference_seconds_total {s['inference_seconds']}"]
        lines += [f'polymodal_batches_by_size{{items="{k}"}} {v}' for k, v in s["batch_sizes"].items()]
        lines += [f'polymodal_responses_total{{status="{k}"}} {v}' for k, v in sorted(app.state.guard_counts.items())]
        return "\n".join(lines) + "\n"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -------------------------------------------------------------------------- task routes
    def route(path: str, body: type[BaseModel], summary: str):
        extra = {"requestBody": {"required": True, "content": {
            "application/json": {"schema": body.model_json_schema()},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "string", "format": "binary", "description": "an image file (repeat for several)"},
                **{k: {"type": "string"} for k in body.model_fields if k not in ("image", "images")}}}}}}}
        return app.post(path, summary=summary, openapi_extra=extra)

    @route("/caption", CaptionBody, "Caption images")
    async def caption(request: Request):
        m = state.need("caption")
        body, images = await read_body(request, CaptionBody, state)
        _need_images(images)
        gen = body.generation()
        out = await state.run("caption", tuple(sorted(gen.items())), images,
                              lambda ims, opts: m.caption(ims, **opts), gen)
        return {"model": settings.model, "results": [{"caption": c} for c in out]}

    @route("/answer", AnswerBody, "Answer a question about each image")
    async def answer(request: Request):
        m = state.need("answer")
        body, images = await read_body(request, AnswerBody, state)
        _need_images(images)
        questions = _per_image(body.question, body.questions, len(images), "question")
        gen = body.generation()
        out = await state.run("answer", tuple(sorted(gen.items())), list(zip(images, questions)),
                              lambda its, opts: m.answer([i for i, _ in its], [q for _, q in its], **opts), gen)
        return {"model": settings.model, "results": [{"question": q, "answer": a} for q, a in zip(questions, out)]}

    @route("/translate", TranslateBody, "Translate a sentence with its image")
    async def translate(request: Request):
        m = state.need("translate")
        body, images = await read_body(request, TranslateBody, state)
        _need_images(images)
        texts = _per_image(body.text, body.texts, len(images), "text")
        gen = body.generation()
        out = await state.run("translate", tuple(sorted(gen.items())), list(zip(images, texts)),
                              lambda its, opts: m.translate([i for i, _ in its], [t for _, t in its], **opts), gen)
        return {"model": settings.model, "results": [{"text": t, "translation": o} for t, o in zip(texts, out)]}

    @route("/classify", ClassifyBody, "Classify images: zero-shot over `labels`, or a fusion classifier's `text`")
    async def classify(request: Request):
        from polymodal.infer.inputs import check_labels

        m = state.need("classify")
        body, images = await read_body(request, ClassifyBody, state)
        _need_images(images)
        texts = _per_image(body.text, body.texts, len(images), "text", required=False)
        if texts is not None:  # a fusion classifier: its own labels, a statement per image
            out = await state.run("classify", ("texts",), list(zip(images, texts)),
                                  lambda its, _: m.classify([i for i, _ in its], texts=[t for _, t in its]))
        else:
            if body.labels is None:
                raise RequestValidationError([{"loc": ("body", "labels"), "msg": "Field required: give the class "
                                               "names (zero-shot), e.g. [\"cat\", \"dog\"]", "type": "missing"}])
            try:
                labels = check_labels(body.labels)
            except DataError as exc:
                raise HTTPProblem(422, f"labels: {exc}") from None
            opts = {"template": body.template} if body.template else {}
            out = await state.run("classify", (tuple(labels), body.template), images,
                                  lambda ims, o: m.classify(ims, labels, **o), opts)
        return {"model": settings.model, "results": jsonable(out)}

    @route("/embed", EmbedBody, "Embed images and / or texts (L2-normalised)")
    async def embed(request: Request):
        m = state.need("embed_images", "embed_texts")
        body, images = await read_body(request, EmbedBody, state)
        texts = body.texts if body.texts is not None else ([body.text] if body.text is not None else [])
        if not images and not texts:
            raise RequestValidationError([{"loc": ("body", "texts"), "msg": "Field required: send images and / or "
                                           "texts to embed", "type": "missing"}])
        results = []
        if images:
            vecs = await _embed(state, m, images, "images")
            results += [{"input": f"image #{i}", "embedding": v} for i, v in enumerate(vecs)]
        if texts:
            vecs = await _embed(state, m, _per_image(None, texts, len(texts), "text"), "texts")
            results += [{"input": f"text #{i}", "embedding": v} for i, v in enumerate(vecs)]
        return {"model": settings.model, "dim": len(results[0]["embedding"]), "results": results}

    @route("/retrieve", RetrieveBody, "Search the --index folder with a text or an image")
    async def retrieve(request: Request):
        m = state.need("retrieve")
        if state.index is None:
            raise HTTPProblem(400, "no image folder is indexed; start the server with --index DIR to search one")
        body, images = await read_body(request, RetrieveBody, state)
        if images:
            [q] = await _embed(state, m, images[:1], "images")
        elif body.query is not None:
            [q] = await _embed(state, m, _per_image(body.query, None, 1, "query"), "texts")
        else:
            raise RequestValidationError([{"loc": ("body", "query"), "msg": "Field required: a text query, or an "
                                           "image to search by", "type": "missing"}])
        hits = state.index.search(np.asarray(q, dtype=np.float32), body.top_k)
        folder = state.index.folder
        return {"model": settings.model, "results": [{**h, "image": str(Path(h["image"]).relative_to(folder))}
                                                      for h in hits]}

    @route("/{method}", TaskBody, "Any other task the model offers (ground, explain, ...): "
                                  "JSON, or `?format=png` for its picture")
    async def task(method: str, request: Request):
        from polymodal.tasks import all_tasks

        # A task's method (`ground`), or a task without an endpoint of its own by any of its names
        # (`/grounding` runs the grounding task's method, if it has one).
        methods = {x for t in all_tasks() for x in t.loaded_methods()} - set(ENDPOINT_OF)
        by_name = {n: (t.method or n) for t in all_tasks() if (t.method or "") not in ENDPOINT_OF
                   for n in (t.name, t.command, *t.aliases) if n}
        if method not in methods and method not in by_name:
            raise HTTPProblem(404, f"no endpoint /{method}; this model has: "
                                   f"{state.offered() if state.model is not None else '(still loading)'}")
        method = method if method in methods else by_name[method]
        m = state.need(method)
        body, images = await read_body(request, TaskBody, state)
        _need_images(images)
        texts = _per_image(body.text, body.texts, len(images), "text", required=False)
        options = dict(body.model_extra or {})
        key = json.dumps(options, sort_keys=True, default=str)
        fn = getattr(m, method)
        if texts is None:
            out = await state.run(method, (key,), images, lambda ims, o: list(fn(ims, **o)), options)
        else:
            out = await state.run(method, (key, "texts"), list(zip(images, texts)),
                                  lambda its, o: list(fn([i for i, _ in its], [t for _, t in its], **o)), options)
        if request.query_params.get("format") == "png" or request.headers.get("accept", "").startswith("image/png"):
            picture = first_picture(out[0], images[0])
            if picture is None:
                raise HTTPProblem(406, f"/{method} gives no picture for this request; ask for JSON instead")
            return Response(png_bytes(picture), media_type="image/png")
        return {"model": settings.model, "results": jsonable(out)}

    mount_openai(app, state)
    return app


async def _embed(state: State, m, items: list, what: str) -> list[list[float]]:
    method = "embed_images" if what == "images" else "embed_texts"
    if method not in m.tasks:
        raise HTTPProblem(400, f"this model (a {m.kind}) cannot embed {what}; it has: {state.offered()}")
    vecs = await state.run(method, (), items, lambda xs, _: list(getattr(m, method)(xs)))
    return [np.asarray(v, dtype=np.float32).tolist() for v in vecs]


async def _load(state: State) -> None:
    try:
        await state.batcher.in_thread(state.load)
        state.ready = True
        log.info("model %s ready: %s", state.settings.model, ", ".join(state.model.tasks))
    except asyncio.CancelledError:
        raise
    except PolymodalError as exc:
        state.error = str(exc)
    except OSError as exc:
        state.error = f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    except Exception as exc:  # noqa: BLE001  (logged with its traceback, told without it)
        log.exception("loading %s failed", state.settings.model)
        state.error = f"{type(exc).__name__}: {exc}"
    if state.error is not None:
        log.error("cannot serve %s: %s", state.settings.model, state.error)
        if state.on_load_error is not None:
            state.on_load_error(state.error)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("polymodal")
    except PackageNotFoundError:
        return "0"


def error_body(status: int, message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "code": status}}


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPProblem)
    async def problem(request: Request, exc: HTTPProblem):
        return JSONResponse(error_body(exc.status, exc.message, exc.kind), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        return JSONResponse(error_body(422, "; ".join(parts) or "invalid request"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}; see GET /info for this model's endpoints, /docs for all"
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, "internal error; the server log has the details", "server_error"),
                            status_code=500)
