"""The task commands over polymodal checkpoints: JSON lines, per-item errors, exit codes, the index."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import polymodal
from polymodal.checkpoint import save_checkpoint
from polymodal.cli import app
from polymodal.models.recipes import get_recipe
from polymodal.processing import Processor

runner = CliRunner()


def _save(name, path):
    torch.manual_seed(0)
    model = polymodal.create_model(name)
    save_checkpoint(path, model, Processor.from_spec(get_recipe(name)["processor"]), recipe=name,
                    task=get_recipe(name)["task"])
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return d


def _lines(out):
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


def test_caption_streams_json_and_reports_bad_items(folder, tmp_path):
    ckpt = _save("captioner-tiny", tmp_path / "cap")
    res = runner.invoke(app, ["caption", "--model", ckpt, str(folder), "--max-tokens", "4", "--json"])
    rows = _lines(res.stdout)
    assert res.exit_code == 1  # one item failed
    assert len(rows) == 5 and [r["image"].rsplit("/", 1)[-1] for r in rows][0] == "broken.png"
    assert "error" in rows[0] and "broken.png" in rows[0]["error"]
    assert all(isinstance(r["caption"], str) for r in rows[1:])
    # The same model called from Python gives the same captions: the CLI is a thin layer.
    m = polymodal.load(ckpt)
    assert m.caption(sorted(str(p) for p in folder.glob("img*.png")), max_new_tokens=4) == [r["caption"] for r in rows[1:]]


def test_ask_on_a_captioner_is_a_clear_error(folder, tmp_path):
    ckpt = _save("captioner-tiny", tmp_path / "cap")
    res = runner.invoke(app, ["ask", "--model", ckpt, "--image", str(folder / "img0.png"), "--question", "why?", "--json"])
    assert res.exit_code == 1
    assert "this checkpoint is a captioner; it cannot answer questions" in _lines(res.stdout)[0]["error"]


def test_ask_requests_file_with_an_empty_question(folder, tmp_path):
    ckpt = _save("vqa-tiny", tmp_path / "vqa")
    req = tmp_path / "req.jsonl"
    req.write_text(json.dumps({"image": str(folder / "img0.png"), "question": "how many?"}) + "\n"
                   + json.dumps({"image": str(folder / "img1.png"), "question": " "}) + "\n")
    res = runner.invoke(app, ["ask", "--model", ckpt, "--requests", str(req), "--json", "--batch-size", "1"])
    rows = _lines(res.stdout)
    assert res.exit_code == 1
    assert rows[0]["answer"] in get_recipe("vqa-tiny")["model"]["labels"]
    assert rows[1]["error"] == f"{req}:2: question is empty; give a non-empty question"


def test_retrieve_builds_then_reuses_the_index(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    ckpt = _save("clip-tiny", tmp_path / "clip")
    before = sorted(p.name for p in folder.iterdir())
    args = ["retrieve", "--model", ckpt, "--images", str(folder), "--query", "a red circle",
            "--query", str(folder / "img2.png"), "--top-k", "2", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    rows = _lines(first.stdout)
    assert len(rows) == 4 and rows[2]["image"].endswith("img2.png") and rows[2]["score"] == pytest.approx(1.0, abs=1e-5)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written into the user's folder
    index_files = sorted((tmp_path / "cache" / "index").iterdir())
    assert [p.suffix for p in index_files] == [".json", ".safetensors"]
    mtime = index_files[1].stat().st_mtime_ns
    second = runner.invoke(app, args)
    assert _lines(second.stdout) == rows and index_files[1].stat().st_mtime_ns == mtime
    # A new image changes the folder: the index is rebuilt and finds it.
    Image.new("RGB", (48, 48), (255, 0, 0)).save(folder / "new.png")
    third = runner.invoke(app, ["retrieve", "--model", ckpt, "--images", str(folder), "--query",
                                str(folder / "new.png"), "--json"])
    assert _lines(third.stdout)[0]["image"].endswith("new.png")
    (folder / "new.png").unlink()


def test_classify_and_embed(folder, tmp_path):
    ckpt = _save("clip-tiny", tmp_path / "clip")
    res = runner.invoke(app, ["classify", "--model", ckpt, "--labels", "red,blue", str(folder / "img0.png"), "--json"])
    row = _lines(res.stdout)[0]
    assert res.exit_code == 0 and row["label"] in ("red", "blue") and sum(row["scores"].values()) == pytest.approx(1.0)
    res = runner.invoke(app, ["embed", "--model", ckpt, "--text", "a red circle", "two squares"])
    rows = _lines(res.stdout)
    assert len(rows) == 2 and np.linalg.norm(rows[0]["embedding"]) == pytest.approx(1.0, abs=1e-4)


def test_int8_load_of_a_native_checkpoint_embeds_close_to_float32(folder, tmp_path):
    ckpt = _save("clip-tiny", tmp_path / "clip")
    images = [str(folder / f"img{i}.png") for i in range(4)]
    f32 = polymodal.load(ckpt).embed_images(images)
    q = polymodal.load(ckpt, int8=True)
    e = q.embed_images(images)
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    assert isinstance(q.model.image_proj.proj, QLinear)
    assert not np.array_equal(f32, e) and (f32 * e).sum(1).min() > 0.95


def test_unknown_model_source_is_exit_2(tmp_path):
    res = runner.invoke(app, ["caption", "--model", str(tmp_path / "nope"), "x.png"])
    assert res.exit_code == 2 and "neither a directory nor a recipe name" in res.output


def test_tables_print_data_text_literally(folder, tmp_path, monkeypatch):
    # Captions and file names are data, not rich markup: "[red]" must not turn into a colour.
    class Captioner:
        def caption(self, images, **generation):
            return ["a [red] circle on [bold]black[/bold]"] * len(images)

    monkeypatch.setattr(polymodal, "load", lambda source, **kw: Captioner())
    image = tmp_path / "x[red].png"                        # an existing file, although "[" is a glob character
    image.write_bytes((folder / "img0.png").read_bytes())
    res = runner.invoke(app, ["caption", "--model", "fake", str(image)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "a [red] circle on [bold]black[/bold]" in res.stdout and "x[red].png" in res.stdout


def test_run_items_decodes_a_batch_at_a_time_and_a_failing_item_fails_alone(folder, monkeypatch):
    import polymodal.data.images as images
    from polymodal.cli import _run_items

    events, real = [], images.load_image
    monkeypatch.setattr(images, "load_image", lambda src, **kw: (events.append("decode"), real(src, **kw))[1])
    items = [{"image": str(folder / f"img{i}.png")} for i in range(4)]

    def fn(ims, its):
        events.append(f"run {len(ims)}")
        if any(it["image"].endswith("img2.png") for it in its):
            raise ValueError("img2 is not welcome")
        return [{"ok": True}] * len(ims)

    rows = _run_items(items, fn, batch_size=2)
    # memory holds one batch of images; the batch with the failing item is rerun item by item
    assert events == ["decode", "decode", "run 2", "decode", "decode", "run 2", "run 1", "run 1"]
    assert [r.get("ok") for r in rows] == [True, True, None, True] and rows[2]["error"] == "img2 is not welcome"
