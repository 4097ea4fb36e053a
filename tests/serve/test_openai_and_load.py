"""The official `openai` client talks to `/v1/chat/completions` and `/v1/embeddings`; and a load
test: 200 requests from 32 concurrent clients, every answer the model's own, none lost, batches
of more than one request, the server healthy afterwards."""
import asyncio
import time

import httpx
import numpy as np
import pytest

import polymodal
from polymodal.serve import ServeSettings

from _serving import Server, data_url, png
from _synthetic import NAMES, image

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def vqa(trained):
    s = Server(ServeSettings(model=trained["vqa"], max_batch=16, max_wait_ms=20))
    s.model = polymodal.load(trained["vqa"])
    yield s
    s.stop()


def _items(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        colour, asked = NAMES[int(rng.integers(len(NAMES)))], NAMES[int(rng.integers(len(NAMES)))]
        out.append((image(colour, rng), f"is it {asked}?" if i % 3 == 2 else "what colour is it?"))
    return out


def _chat(image_array, text=None):
    content = [{"type": "image_url", "image_url": {"url": data_url(image_array)}}]
    if text is not None:
        content.insert(0, {"type": "text", "text": text})
    return [{"role": "system", "content": "You look at images."}, {"role": "user", "content": content}]


def test_the_openai_client_gets_the_models_answers(vqa):
    client = openai.OpenAI(base_url=vqa.url + "/v1", api_key="unused", max_retries=0)
    items = _items(4, seed=11)
    direct = vqa.model.answer([im for im, _ in items], [q for _, q in items])
    for (im, q), want in zip(items, direct):
        out = client.chat.completions.create(model="polymodal", messages=_chat(im, q), temperature=0, max_tokens=8)
        assert out.choices[0].message.content == want and out.choices[0].finish_reason == "stop"
        assert out.object == "chat.completion" and out.usage.completion_tokens >= 1
    stream = client.chat.completions.create(model="polymodal", messages=_chat(*items[0]), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == direct[0]
    with pytest.raises(openai.BadRequestError, match="no image in the messages"):
        client.chat.completions.create(model="polymodal", messages=[{"role": "user", "content": "hello"}])
    assert [m.id for m in client.models.list()] == [vqa.state.settings.model]


def test_the_openai_client_gets_captions_and_embeddings(trained, clip_ckpt):
    cap = Server(ServeSettings(model=trained["caption"]))
    clip = Server(ServeSettings(model=clip_ckpt))
    try:
        im = image("blue", np.random.default_rng(2))
        want = polymodal.load(trained["caption"]).caption([im])[0]
        client = openai.OpenAI(base_url=cap.url + "/v1", api_key="unused", max_retries=0)
        out = client.chat.completions.create(model="m", messages=_chat(im, "Describe this image."))
        assert out.choices[0].message.content == want  # a captioner captions, whatever the text asks
        client = openai.OpenAI(base_url=clip.url + "/v1", api_key="unused", max_retries=0)
        res = client.embeddings.create(model="m", input=["a blue image", "a red image"])  # base64 on the wire
        want = polymodal.load(clip_ckpt).embed_texts(["a blue image", "a red image"])
        assert np.allclose([d.embedding for d in res.data], want, atol=1e-5)
    finally:
        cap.stop()
        clip.stop()


def test_200_requests_from_32_clients_all_answered_right_in_shared_batches(vqa):
    items = _items(200, seed=3)
    # the model's direct answers, one request at a time, as a caller without a server would get them
    direct = [vqa.model.answer([im], [q])[0] for im, q in items]
    assert len(set(direct)) >= 4
    before = vqa.get("/info").json()["batching"]

    async def one(client, i, sem):
        im, q = items[i]
        async with sem:
            if i % 4 == 0:  # the OpenAI route shares the batches of /answer
                res = await client.post("/v1/chat/completions", json={"messages": _chat(im, q)})
                return i, res.status_code, res.json()["choices"][0]["message"]["content"] if res.status_code == 200 else res.text
            if i % 2:
                res = await client.post("/answer", files={"image": png(im)}, data={"question": q})
            else:
                res = await client.post("/answer", json={"image": data_url(im), "question": q})
            return i, res.status_code, res.json()["results"][0]["answer"] if res.status_code == 200 else res.text

    async def run():
        sem = asyncio.Semaphore(32)  # 32 clients at a time
        async with httpx.AsyncClient(base_url=vqa.url, timeout=60,
                                     limits=httpx.Limits(max_connections=32)) as client:
            return await asyncio.gather(*(one(client, i, sem) for i in range(len(items))))

    start = time.monotonic()
    results = asyncio.run(run())
    elapsed = time.monotonic() - start
    assert len(results) == 200 and sorted(i for i, _, _ in results) == list(range(200))  # none lost
    bad = [(i, status, got, direct[i]) for i, status, got in results if status != 200 or got != direct[i]]
    assert not bad, bad[:5]
    after = vqa.get("/info").json()["batching"]
    assert after["jobs"] - before["jobs"] == 200 and after["failed"] == before["failed"]
    sizes = {int(k): v - before["requests_per_batch"].get(k, 0) for k, v in after["requests_per_batch"].items()}
    assert max(k for k, v in sizes.items() if v > 0) > 1, sizes  # requests shared forward passes
    assert after["batches"] - before["batches"] < 200
    assert after["in_flight"] == 0 and vqa.get("/health").status_code == 200
    res = vqa.post("/answer", json={"image": data_url(items[0][0]), "question": items[0][1]})
    assert res.json()["results"][0]["answer"] == direct[0]
    print(f"200 requests in {elapsed:.2f} s; batches {after['batches'] - before['batches']}, sizes {sizes}")
