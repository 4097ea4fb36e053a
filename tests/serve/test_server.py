"""`polymodal serve` over real uvicorn servers on loopback ports: every endpoint gives what the
loaded model gives directly, and every bad request gets its status and a message (never a
traceback) while the server goes on serving."""
import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

import polymodal
from polymodal.errors import DataError
from polymodal.serve import ServeSettings
from polymodal.tasks import Task, register_task

from _serving import Server, data_url, png
from _synthetic import NAMES, image

# --------------------------------------------------------------- a task added outside the package
#: set while the test's model loads, so only that model offers the tasks below
PLUGINS_ON = threading.Event()


@register_task
class Brightness(Task):
    """A task registered here, as `ground` / `explain` will be: per image a 4x4 brightness heat map
    and the box of its brightest quarter. The server must route it without knowing it."""

    name = "serve_test_brightness"
    method = "brightness"
    kind = "brightness mapper"

    def offered_by(self, model, trained_for):
        return PLUGINS_ON.is_set()

    def run(self, loaded, images, texts=None, cells: int = 4):
        from polymodal.infer.inputs import as_image_list, read_image

        out = []
        for i, im in enumerate(as_image_list(images)):
            a = np.asarray(read_image(im, i).convert("L"), dtype=np.float64)
            h, w = a.shape
            heat = np.array([[a[r * h // cells:(r + 1) * h // cells, c * w // cells:(c + 1) * w // cells].mean()
                              for c in range(cells)] for r in range(cells)])
            r, c = np.unravel_index(heat.argmax(), heat.shape)
            out.append({"heat": heat, "box": [c * w / cells, r * h / cells, (c + 1) * w / cells, (r + 1) * h / cells],
                        "label": texts[i] if texts else ""})
        return out


@register_task
class Crash(Task):
    """A task whose method fails with an internal error (a bug): the server answers 500, says no more."""

    name = "serve_test_crash"
    method = "crash"

    def offered_by(self, model, trained_for):
        return PLUGINS_ON.is_set()

    def run(self, loaded, images, **_):
        raise RuntimeError("secret internal detail /home/someone/model.py line 12")


def _load_with_plugins(path):
    PLUGINS_ON.set()
    try:
        return polymodal.load(path)
    finally:
        PLUGINS_ON.clear()


# ------------------------------------------------------------------------------------ servers
@pytest.fixture(scope="module")
def vqa(trained):
    """The VQA model (plus the two tasks above), small limits: 1 MB bodies, 1 megapixel images."""
    model = _load_with_plugins(trained["vqa"])
    s = Server(ServeSettings(model=trained["vqa"], max_batch=16, max_wait_ms=20, max_upload_mb=1,
                             max_pixels=1_000_000, max_images=4), loader=lambda: model)
    s.model = model
    yield s
    s.stop()


@pytest.fixture(scope="module")
def cap(trained):
    s = Server(ServeSettings(model=trained["caption"]))
    s.model = polymodal.load(trained["caption"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def clip(clip_ckpt, image_folder, tmp_path_factory):
    os.environ["POLYMODAL_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    s = Server(ServeSettings(model=clip_ckpt, index=str(image_folder)))
    s.model = polymodal.load(clip_ckpt)
    yield s
    s.stop()


def _test_items(n, seed=7):
    """(image, question) pairs: mostly "what colour is it?" (the answer is the image's colour), some
    "is it X?" (yes / no), so the right answers differ from request to request."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        colour = NAMES[int(rng.integers(len(NAMES)))]
        asked = NAMES[int(rng.integers(len(NAMES)))]
        out.append((image(colour, rng), f"is it {asked}?" if i % 4 == 3 else "what colour is it?"))
    return out


def _error(res, status, *says):
    """The response has `status`, an error message containing each of `says`, and no traceback."""
    assert res.status_code == status, (res.status_code, res.text)
    body = res.json()
    message = body["error"]["message"]
    assert body["error"]["code"] == status
    for s in says:
        assert re.search(s, message), (s, message)
    assert "Traceback" not in res.text and 'File "' not in res.text
    return message


# ------------------------------------------------------------------------------ the endpoints
def test_health_says_loading_until_the_model_is_loaded_then_ok(trained):
    go = threading.Event()

    def slow_loader():
        go.wait(30)
        return polymodal.load(trained["vqa"])

    s = Server(ServeSettings(model=trained["vqa"]), loader=slow_loader, wait_ready=False)
    try:
        res = s.get("/health")
        assert res.status_code == 503 and res.json() == {"status": "loading"} and res.headers["Retry-After"]
        _error(s.post("/answer", files={"image": png(image("red", np.random.default_rng(0)))},
                      data={"question": "what colour is it?"}), 503, "still loading")
        assert s.get("/info").json()["ready"] is False
        go.set()
        s.wait_ready()
        assert s.get("/health").json() == {"status": "ok", "model": trained["vqa"]}
    finally:
        go.set()
        s.stop()


def test_a_model_that_cannot_load_is_reported_not_served(tmp_path):
    def broken():
        raise DataError(f"{tmp_path}: no config.json; a polymodal checkpoint needs one")

    s = Server(ServeSettings(model=str(tmp_path)), loader=broken, wait_ready=False)
    try:
        deadline = time.monotonic() + 10
        while s.get("/health").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        res = s.get("/health")
        assert res.status_code == 503 and "no config.json" in res.json()["error"]
        _error(s.post("/answer", json={}), 503, "could not be loaded: .*no config.json")
    finally:
        s.stop()


def test_info_openapi_and_page(vqa):
    info = vqa.get("/info").json()
    assert info["tasks"] == list(vqa.model.tasks) and {"answer", "brightness", "crash"} <= set(info["tasks"])
    assert info["endpoints"]["answer"] == "/answer" and info["endpoints"]["brightness"] == "/brightness"
    assert info["kind"] == "visual question answerer" and info["ready"] is True
    assert info["limits"]["max_upload_mb"] == 1 and info["limits"]["max_batch"] == 16
    assert info["openai"] == {"chat": True, "embeddings": False}
    spec = vqa.get("/openapi.json").json()
    for path in ("/caption", "/answer", "/classify", "/embed", "/retrieve", "/translate", "/{method}", "/health",
                 "/info", "/v1/chat/completions", "/v1/embeddings", "/v1/models"):
        assert path in spec["paths"], path
    assert "multipart/form-data" in spec["paths"]["/answer"]["post"]["requestBody"]["content"]
    page = vqa.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text
    assert not re.search(r"""(src|href)=["']https?://""", page.text)  # no CDN: everything from this server
    assert vqa.get("/static/app.js").status_code == 200 and "https://" not in vqa.get("/static/app.js").text
    assert vqa.get("/v1/models").json()["data"][0]["id"] == vqa.state.settings.model


def test_answer_takes_uploads_base64_and_data_urls_and_matches_the_model(vqa):
    items = _test_items(6)
    direct = vqa.model.answer([im for im, _ in items], [q for _, q in items])
    assert len(set(direct)) > 2  # the answers differ, so a mix-up would show
    (im0, q0), (im1, q1) = items[:2]
    res = vqa.post("/answer", files={"image": ("a.png", png(im0), "image/png")}, data={"question": q0})
    assert res.json()["results"] == [{"question": q0, "answer": direct[0]}]
    res = vqa.post("/answer", json={"image": base64.b64encode(png(im1)).decode(), "question": q1})
    assert res.json()["results"][0]["answer"] == direct[1]
    # several images, a question each, as data URLs; and as repeated multipart files
    res = vqa.post("/answer", json={"images": [data_url(im) for im, _ in items[2:6]],
                                    "questions": [q for _, q in items[2:6]]})
    assert [r["answer"] for r in res.json()["results"]] == direct[2:6]
    res = vqa.post("/answer", files=[("image", png(im)) for im, _ in items[2:4]],
                   data={"questions": [q for _, q in items[2:4]]})
    assert [r["answer"] for r in res.json()["results"]] == direct[2:4], res.text


def test_caption_with_generation_options_matches_the_model(cap):
    ims = [image(c, np.random.default_rng(i)) for i, c in enumerate(NAMES)]
    direct = cap.model.caption(ims)
    assert len(set(direct)) > 2
    res = cap.post("/caption", files=[("image", png(im)) for im in ims])
    assert [r["caption"] for r in res.json()["results"]] == direct
    short = cap.model.caption(ims[:2], num_beams=2, max_new_tokens=2)
    res = cap.post("/caption", json={"images": [data_url(im) for im in ims[:2]], "num_beams": 2, "max_new_tokens": 2})
    assert [r["caption"] for r in res.json()["results"]] == short
    _error(cap.post("/caption", json={"image": data_url(ims[0]), "num_beams": 0}), 422, "num_beams")


def test_classify_embed_and_retrieve_match_the_model(clip, image_folder):
    m, rng = clip.model, np.random.default_rng(3)
    ims = [image(c, rng) for c in NAMES[:3]]
    labels = ["red", "green", "blue", "white"]
    direct = m.classify(ims, labels)
    res = clip.post("/classify", json={"images": [data_url(im) for im in ims], "labels": labels}).json()["results"]
    for got, want in zip(res, direct):
        assert got["label"] == want["label"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    res = clip.post("/classify", files={"image": png(ims[0])}, data={"labels": "red, green,blue , white"})
    assert res.json()["results"][0]["scores"] == pytest.approx(direct[0]["scores"], abs=1e-5)
    _error(clip.post("/classify", json={"image": data_url(ims[0]), "labels": ["red", "red"]}), 422, "given twice")

    res = clip.post("/embed", json={"images": [data_url(im) for im in ims], "texts": ["a red image", "a cat"]}).json()
    vecs = np.array([r["embedding"] for r in res["results"]])
    want = np.concatenate([m.embed_images(ims), m.embed_texts(["a red image", "a cat"])])
    assert res["dim"] == want.shape[1] and np.allclose(vecs, want, atol=1e-5)
    assert [r["input"] for r in res["results"]] == ["image #0", "image #1", "image #2", "text #0", "text #1"]

    info = clip.get("/info").json()
    assert info["index"]["images"] == 5 and info["index"]["unreadable"] == 1  # broken.png listed apart
    names = sorted(p.name for p in image_folder.glob("*.png") if p.name != "broken.png")
    scores = m.embed_images([str(image_folder / n) for n in names]) @ m.embed_texts(["a blue image"])[0]
    order = [names[i] for i in np.argsort(-scores)]
    res = clip.post("/retrieve", json={"query": "a blue image", "top_k": 3}).json()["results"]
    assert [r["image"] for r in res] == order[:3] and [r["rank"] for r in res] == [1, 2, 3]
    assert res[0]["score"] == pytest.approx(float(scores.max()), abs=1e-5)
    res = clip.post("/retrieve", files={"image": (image_folder / "green.png").read_bytes()}, data={"top_k": "1"})
    assert res.json()["results"][0]["image"] == "green.png"  # an image finds itself first


def test_v1_embeddings_float_and_base64(clip):
    want = clip.model.embed_texts(["a red image", "a blue image"])
    res = clip.post("/v1/embeddings", json={"input": ["a red image", "a blue image"], "model": "x"}).json()
    assert res["object"] == "list" and [d["index"] for d in res["data"]] == [0, 1]
    assert np.allclose([d["embedding"] for d in res["data"]], want, atol=1e-5)
    assert res["usage"]["prompt_tokens"] > 0
    res = clip.post("/v1/embeddings", json={"input": "a red image", "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(res["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vec, want[0], atol=1e-5)
    im = image("red", np.random.default_rng(1))
    res = clip.post("/v1/embeddings", json={"input": [data_url(im)]}).json()  # an image, as a data URL
    assert np.allclose(res["data"][0]["embedding"], clip.model.embed_images([im])[0], atol=1e-5)
    _error(clip.post("/v1/embeddings", json={"input": ["ok", "  "]}), 422, r"input\[1\] is empty")


def test_a_task_registered_elsewhere_is_served_as_json_and_png(vqa):
    im = np.zeros((32, 32, 3), dtype=np.uint8)
    im[:16, 16:] = 250  # the bright quarter: top right
    want = vqa.model.brightness([im], texts=["the bright part"])[0]
    res = vqa.post("/brightness", files={"image": png(im)}, data={"text": "the bright part"}).json()["results"][0]
    assert res["box"] == want["box"] == [16.0, 0.0, 24.0, 8.0]
    assert np.allclose(res["heat"], want["heat"]) and res["label"] == "the bright part"
    res = vqa.post("/brightness", json={"image": data_url(im), "cells": 2})  # an option of the method
    assert np.array(res.json()["results"][0]["heat"]).shape == (2, 2)
    res = vqa.post("/brightness?format=png", files={"image": png(im)})
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    assert Image.open(__import__("io").BytesIO(res.content)).size == (32, 32)  # the heat map over the image


def test_explain_is_served_as_json_and_png(vqa):
    """`/explain` (polymodal.explain): the model's heat map as JSON (the image's size, in [0, 1]),
    or drawn over the image with `?format=png`."""
    im = np.zeros((32, 48, 3), dtype=np.uint8)
    im[4:12, 30:40] = 250
    want = vqa.model.explain([im], ["what colour is it?"], method="attention")[0]
    res = vqa.post("/explain", json={"image": data_url(im), "text": "what colour is it?", "method": "attention"})
    got = res.json()["results"][0]
    assert res.status_code == 200 and got["method"] == "attention" and got["answer"] == want.answer
    assert np.allclose(got["map"], want.map, atol=1e-6) and np.array(got["map"]).shape == (32, 48)
    res = vqa.post("/explain?format=png", files={"image": png(im)}, data={"text": "what colour is it?"})
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"


# ------------------------------------------------------------------------------------- errors
def test_upload_over_the_limit_is_413_with_or_without_a_length(vqa):
    big = b"\0" * (1024 * 1024 + 10)
    _error(vqa.post("/answer", files={"image": ("big.png", big)}, data={"question": "q"}), 413, "1 MB limit")

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"x" * 100_000

    _error(vqa.post("/answer", content=chunks(), headers={"content-type": "application/json"}), 413, "--max-upload-mb")
    assert vqa.get("/health").status_code == 200


def test_bad_images_are_415_or_422(vqa):
    q = {"question": "what colour is it?"}
    _error(vqa.post("/answer", files={"image": ("notes.png", b"hello, I am text")}, data=q), 415,
           "notes.png: not an image")
    _error(vqa.post("/answer", content=b"hi", headers={"content-type": "text/plain"}), 415, "content type 'text/plain'")
    good = png(image("red", np.random.default_rng(0)))
    _error(vqa.post("/answer", files={"image": ("cut.png", good[:60])}, data=q), 422, "cut.png: corrupt or truncated")
    bomb = png(np.zeros((1000, 1100, 3), dtype=np.uint8))  # 1.1 megapixels, over this server's 1 MP limit
    assert len(bomb) < 100_000  # small on the wire, large in memory: refused from its header
    _error(vqa.post("/answer", files={"image": ("bomb.png", bomb)}, data=q), 422, "1100x1000 is over the 1000000-pixel")
    _error(vqa.post("/answer", json={"image": "not base64 !!", **q}), 422, "image: not valid base64")
    _error(vqa.post("/answer", json={"image": "https://example.com/cat.jpg", **q}), 422, "fetches nothing")
    _error(vqa.post("/answer", json={"images": [data_url(np.zeros((8, 8, 3), np.uint8))] * 5, "question": "q"}),
           422, "at most 4")


def test_missing_or_bad_fields_are_422_naming_them(vqa):
    im = data_url(image("red", np.random.default_rng(0)))
    _error(vqa.post("/answer", json={"image": im}), 422, "question: Field required")
    _error(vqa.post("/answer", json={"question": "what colour is it?"}), 422, "image: Field required")
    _error(vqa.post("/answer", json={"image": im, "question": "   "}), 422, "question is empty")
    _error(vqa.post("/answer", json={"image": im, "question": 7}), 422, "question: Input should be a valid string")
    _error(vqa.post("/answer", json={"images": [im, im], "questions": ["a?"]}), 422, "1 questions for 2 images")
    _error(vqa.post("/answer", json={"image": im, "question": "q", "colour": 1}), 422, "colour: Extra inputs")
    _error(vqa.post("/answer", content=b"{not json", headers={"content-type": "application/json"}), 422, "not valid JSON")
    _error(vqa.post("/answer", json=[1, 2]), 422, "must be a JSON object")
    _error(vqa.post("/v1/chat/completions", json={"model": "m"}), 422, "messages: Field required")


def test_a_task_the_model_lacks_is_400_naming_what_it_has(vqa, clip):
    im = data_url(image("red", np.random.default_rng(0)))
    has = r"has: .*answer \(POST /answer\)"
    _error(vqa.post("/caption", json={"image": im}), 400, "visual question answerer.*cannot caption", has)
    _error(vqa.post("/classify", json={"image": im, "labels": ["a", "b"]}), 400, has)
    _error(vqa.post("/ground", json={"image": im, "text": "the red one"}), 400, "cannot ground", has)
    _error(vqa.post("/v1/embeddings", json={"input": "a red image"}), 400, "cannot embed", has)
    _error(clip.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}), 400,
           "image-text embedder", "classify")
    _error(vqa.post("/nope", json={}), 404, "no endpoint /nope", has)
    _error(vqa.get("/nope/deeper"), 404, "no endpoint")
    _error(vqa.post("/retrieve", json={"query": "x"}), 400, "cannot retrieve")
    _error(vqa.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "what colour?"}]}), 400,
           "no image in the messages")
    _error(vqa.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": im}}]}], "n": 2}), 400, "n=2")


def test_an_internal_error_is_500_without_details_and_the_server_goes_on(vqa):
    im = data_url(image("red", np.random.default_rng(0)))
    msg = _error(vqa.post("/crash", json={"image": im}), 500, "internal error")
    assert "secret" not in msg and "model.py" not in msg
    res = vqa.post("/answer", json={"image": im, "question": "what colour is it?"})
    assert res.status_code == 200 and vqa.get("/health").status_code == 200


def test_queue_full_is_503_with_retry_after_then_serves_again(trained):
    s = Server(ServeSettings(model=trained["vqa"], max_queue=2, max_wait_ms=1500, max_batch=16))
    try:
        body = {"image": data_url(image("red", np.random.default_rng(0))), "question": "what colour is it?"}

        async def burst():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
                first = [asyncio.create_task(client.post("/answer", json=body)) for _ in range(2)]
                await asyncio.sleep(0.5)  # both wait for their batch to fill (1.5 s)
                third = await client.post("/answer", json=body)
                return [await t for t in first], third

        (a, b), third = asyncio.run(burst())
        _error(third, 503, "busy", "retry after")
        assert int(third.headers["Retry-After"]) >= 1
        assert a.status_code == b.status_code == 200 and a.json() == b.json()
        stats = s.get("/info").json()["batching"]
        assert stats["rejected_queue_full"] == 1 and stats["requests_per_batch"] == {"2": 1}  # one pass for both
        assert s.post("/answer", json=body).status_code == 200
    finally:
        s.stop()


def test_a_request_past_its_timeout_is_504_and_the_server_goes_on(trained):
    s = Server(ServeSettings(model=trained["vqa"], timeout_s=0.3, max_wait_ms=1000))
    try:
        body = {"image": data_url(image("red", np.random.default_rng(0))), "question": "what colour is it?"}
        _error(s.post("/answer", json=body), 504, r"no answer within --timeout-s 0.3 s")
        time.sleep(1.0)  # the dropped job leaves the queue when its batch would have run
        info = s.get("/info").json()["batching"]
        assert info["timeouts"] == 1 and info["in_flight"] == 0 and info["batches"] == 0  # never run
        assert s.get("/health").status_code == 200
    finally:
        s.stop()


# ---------------------------------------------------------------------------------- the command
def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_serve_command_binds_loopback_and_serves(clip_ckpt, tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from polymodal.cli import main; main()", "serve", "--model",
                             clip_ckpt, "--port", str(port), "--max-batch", "4"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "slow"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        info = httpx.get(f"http://127.0.0.1:{port}/info").json()
        assert info["limits"]["max_batch"] == 4 and "embed_texts" in info["tasks"]
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert f"Uvicorn running on http://127.0.0.1:{port}" in out, out  # loopback unless told otherwise
    assert "ready" in out


def test_the_serve_command_with_a_bad_model_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", "from polymodal.cli import main; main()", "serve", "--model",
                          str(tmp_path), "--port", str(_free_port())], env=env, capture_output=True, text=True,
                         timeout=90)
    assert res.returncode == 2, res.stderr
    assert "error: --model" in res.stderr and "no config.json" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-c", "from polymodal.cli import main; main()", "serve", "--model", "x",
                          "--index", str(tmp_path / "nope")], env=env, capture_output=True, text=True, timeout=90)
    assert res.returncode == 2 and "--index" in res.stderr and "not a folder" in res.stderr
