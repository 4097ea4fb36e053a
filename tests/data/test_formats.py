"""Readers: every format round-trips what the shapes generator wrote; specs are parsed strictly;
WebDataset shards stream the same records as the JSONL; validate and stats report the truth."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from polymodal.data import open_dataset, parse_spec
from polymodal.data.formats import guess_format
from polymodal.data.tools import shard, stats, validate
from polymodal.errors import ConfigError, DataError
from polymodal.tasks import get_task


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _by_id(records) -> dict:
    return {r["id"]: r for r in records}


@pytest.mark.parametrize("split", ["train", "comp"])
def test_coco_and_karpathy_files_round_trip_the_captions(shapes_dir, split):
    want = _by_id(open_dataset(f"jsonl:{shapes_dir}/captions_{split}.jsonl"))
    assert all(Path(r["image"]).is_file() for r in want.values())
    for spec in (f"coco:{shapes_dir}/coco_captions_{split}.json", f"coco:{shapes_dir}/dataset_shapes.json:{split}"):
        got = _by_id(open_dataset(spec))
        assert got.keys() == want.keys(), spec
        for k, r in got.items():
            assert r["captions"] == want[k]["captions"] and r["caption"] == want[k]["caption"]
            assert Path(r["image"]).resolve() == Path(want[k]["image"]).resolve()
    # a COCO file plus a Karpathy split file
    all_splits = open_dataset({"format": "coco", "path": str(shapes_dir / "coco_captions_train.json"),
                               "split_file": str(shapes_dir / "dataset_shapes.json"), "split": "train"})
    assert len(all_splits) == len(want) if split == "train" else True


def test_vqa_json_round_trips_the_questions(shapes_dir):
    want = {(r["image_id"], r["question"]): r for r in open_dataset(f"shapes:{shapes_dir}:vqa:val")}
    got = list(open_dataset(f"vqa:{shapes_dir}/vqa_val_questions.json,{shapes_dir}/vqa_val_annotations.json"))
    assert len(got) == len(want)
    for r in got:
        w = want[(r["image_id"], r["question"])]
        assert r["answers"] == w["answers"] * 10 and r["answer"] == w["answers"][0]
        assert (r["question_type"], r["answer_type"]) == (w["question_type"], w["answer_type"])
        assert Path(r["image"]).resolve() == Path(w["image"]).resolve()
    # questions only (a test-dev set without answers)
    bare = list(open_dataset(f"vqa:{shapes_dir}/vqa_val_questions.json"))
    assert len(bare) == len(got) and "answers" not in bare[0]
    # a {split} placeholder
    spec = {"format": "vqa", "path": f"{shapes_dir}/vqa_{{split}}_questions.json,{shapes_dir}/vqa_{{split}}_annotations.json"}
    assert len(open_dataset(spec, split="val")) == len(got)


def test_folder_tree_and_shapes_reader(shapes_dir):
    scenes = {r["id"]: r["scene"] for r in open_dataset(f"shapes:{shapes_dir}")}
    recs = list(open_dataset(f"folder:{shapes_dir}/classes", split="train"))
    assert recs and {r["label"] for r in recs} <= {"circle", "square", "triangle", "diamond", "cross"}
    for r in recs:
        scene = scenes[str(int(Path(r["image"]).stem))]
        assert [o["shape"] for o in scene["objects"]] == [r["label"]]
    reader = open_dataset(f"folder:{shapes_dir}/classes/train")
    assert reader.classes == sorted({r["label"] for r in recs})
    assert list(open_dataset(f"shapes:{shapes_dir}:ground", split="test")) == \
        list(open_dataset(f"jsonl:{shapes_dir}/ground_test.jsonl"))
    with pytest.raises(DataError, match="no split 'nope'"):
        open_dataset(f"shapes:{shapes_dir}", split="nope")


@pytest.mark.parametrize("task", ["vqa", "captions"])
def test_webdataset_shards_stream_the_same_records_as_the_jsonl(shapes_dir, tmp_path, task):
    jsonl = list(open_dataset(f"jsonl:{shapes_dir}/{task}_train.jsonl"))
    report = shard(f"shapes:{shapes_dir}:{task}:train", tmp_path / "shards", maxcount=97)
    assert report["records"] == len(jsonl) and report["skipped"] == 0
    assert len(report["shards"]) == -(-len(jsonl) // 97)
    reader = open_dataset(report["spec"])
    assert reader.streaming
    streamed = list(reader)
    assert len(streamed) == len(jsonl)
    for a, b in zip(streamed, jsonl):
        assert a["image"] == Path(b["image"]).read_bytes()  # the file's bytes, not re-encoded
        assert {k: v for k, v in a.items() if k != "image"} == {k: v for k, v in b.items() if k != "image"}
    # workers (and processes) get disjoint shares that cover every record
    for parts in (2, 3, 11):  # 11 > shards: every worker reads all and keeps every 11th
        shares = [[e.record["id"] for e in reader.entries(w, parts)] for w in range(parts)]
        flat = [i for s in shares for i in s]
        assert sorted(flat) == sorted(r["id"] for r in jsonl) and len(set(flat)) == len(flat)
    # sharding is deterministic
    again = shard(f"shapes:{shapes_dir}:{task}:train", tmp_path / "again", maxcount=97)
    assert [Path(p).read_bytes() for p in again["shards"]] == [Path(p).read_bytes() for p in report["shards"]]


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png_bytes(colour=(255, 0, 0), size=(4, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_webdataset_laion_style_samples_and_broken_shards(tmp_path):
    _tar(tmp_path / "a-0.tar", {"s1.jpg": _png_bytes(), "s1.txt": b"a red square", "s2.png": _png_bytes(),
                                "s2.cls": b"3", "s2.json": b'{"id": "two", "text": "hi"}'})
    good = (tmp_path / "a-0.tar").read_bytes()
    (tmp_path / "a-1.tar").write_bytes(good[: 512 + 40])  # download cut off inside the first member
    (tmp_path / "a-2.tar").write_bytes(good[: 2 * 512] + b"\x07" * 2048)  # one member, then garbage
    reader = open_dataset(f"wds:{tmp_path}/a-{{0..2}}.tar")
    entries = list(reader.entries())
    ok = [e.record for e in entries if e.error is None]
    bad = [e for e in entries if e.error is not None]
    assert ok[0]["caption"] == "a red square" and ok[0]["id"] == "s1" and ok[0]["image"] == _png_bytes()
    assert ok[1]["label"] == 3 and ok[1]["id"] == "two" and ok[1]["text"] == "hi"
    assert len(ok) == 3 and ok[2]["image"] == _png_bytes() and "caption" not in ok[2]
    assert [Path(e.where.rpartition(":")[0]).name for e in bad] == ["a-1.tar", "a-2.tar"]
    with pytest.raises(DataError, match="no shard found"):
        open_dataset(f"wds:{tmp_path}/missing-{{0..3}}.tar")


def test_spec_strings_yaml_and_guessing(shapes_dir, tmp_path):
    assert parse_spec("coco:a/b.json:test") == {"format": "coco", "path": "a/b.json", "split": "test"}
    assert parse_spec("coco:a/b.json") == {"format": "coco", "path": "a/b.json"}
    assert parse_spec("shapes:out:vqa:val") == {"format": "shapes", "path": "out", "task": "vqa", "split": "val"}
    assert parse_spec("vqa:q.json,a.json") == {"format": "vqa", "path": "q.json,a.json"}
    assert parse_spec("wds:s/x-{000..009}.tar") == {"format": "wds", "path": "s/x-{000..009}.tar"}
    assert parse_spec("{format: jsonl, path: x.jsonl, fields: {caption: text}}") == \
        {"format": "jsonl", "path": "x.jsonl", "fields": {"caption": "text"}}
    yml = tmp_path / "data.yaml"
    yml.write_text(f"format: shapes\npath: {shapes_dir}\ntask: classify\nsplit: test\n")
    assert len(open_dataset(str(yml))) == 60
    assert guess_format(str(shapes_dir)) == "shapes"
    assert guess_format(str(shapes_dir / "classes" / "train")) == "folder"
    assert guess_format(str(shapes_dir / "vqa_val_questions.json")) == "vqa"
    assert guess_format(str(shapes_dir / "coco_captions_val.json")) == "coco"
    assert guess_format("x/y-{0..3}.tar") == "wds"
    assert len(open_dataset(str(shapes_dir / "captions_val.jsonl"))) == 20


def test_specs_are_strict(shapes_dir):
    with pytest.raises(ConfigError, match="unknown format 'csv'"):
        open_dataset("csv:data.csv")
    with pytest.raises(ConfigError, match="colour_field"):
        open_dataset({"format": "jsonl", "path": str(shapes_dir / "vqa_val.jsonl"), "colour_field": 1})
    with pytest.raises(ConfigError, match="fields.capshun"):
        open_dataset({"format": "jsonl", "path": str(shapes_dir / "vqa_val.jsonl"), "fields": {"capshun": "text"}})
    with pytest.raises(ConfigError, match="missing 'format'"):
        open_dataset({"path": "x.jsonl"})
    with pytest.raises(ConfigError, match="split 'val' but the spec names split 'test'"):
        open_dataset(f"shapes:{shapes_dir}:vqa:test", split="val")
    with pytest.raises(ConfigError, match="task 'nope'"):
        open_dataset(f"shapes:{shapes_dir}:nope")
    with pytest.raises(DataError, match="no such JSONL"):
        open_dataset("jsonl:/nowhere/x.jsonl")


def _user_dataset(tmp_path: Path) -> Path:
    """A user's JSONL with their own key names, relative images, and a few bad records."""
    img = tmp_path / "img"
    img.mkdir()
    (img / "ok.png").write_bytes(_png_bytes(size=(10, 8)))
    (img / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    lines = [
        {"pic": "img/ok.png", "txt": "a red square", "bbox": [1, 1, 5, 5]},
        {"pic": "img/missing.png", "txt": "gone"},
        {"pic": "img/corrupt.jpg", "txt": "broken"},
        {"pic": "img/ok.png", "txt": "   "},
        {"pic": "img/ok.png", "txt": "box out of the image", "bbox": [0, 0, 50, 5]},
        "{not json",
        {"pic": "img/ok.png"},
    ]
    path = tmp_path / "user.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_field_mapping_and_relative_images(tmp_path):
    path = _user_dataset(tmp_path)
    spec = {"format": "jsonl", "path": str(path), "fields": {"image": "pic", "caption": "txt", "box": "bbox"}}
    reader = open_dataset(spec)
    first = reader[0]
    assert first == {"image": str(tmp_path / "img" / "ok.png"), "caption": "a red square", "box": [1, 1, 5, 5]}
    with pytest.raises(DataError, match=r"user.jsonl:6: not JSON"):
        list(reader)
    other_root = tmp_path / "elsewhere"
    spec["images"] = str(other_root)
    assert open_dataset(spec)[0]["image"] == str(other_root / "img" / "ok.png")


def test_validate_reports_each_kind_of_bad_record(tmp_path):
    path = _user_dataset(tmp_path)
    spec = {"format": "jsonl", "path": str(path), "fields": {"image": "pic", "caption": "txt", "box": "bbox"}}
    report = validate(spec, task=get_task("caption"))
    assert report["records"] == 7 and report["ok"] == 1 and report["bad"] == 6
    assert report["problems"] == {"missing image": 1, "unreadable image": 1, "empty text": 1,
                                  "bad field": 1, "unreadable record": 1, "missing field": 1}
    where = [p["where"].rpartition(":")[2] for p in report["first"]]
    assert where == ["2", "3", "4", "5", "6", "7"]
    assert "missing.png" in report["first"][0]["problem"]
    assert "outside the 10x8 image" in report["first"][3]["problem"]
    assert validate(spec, task=get_task("caption"), max_errors=2)["first"][1]["where"].endswith(":3")


def test_validate_and_stats_on_the_generated_world(shapes_dir):
    report = validate(f"shapes:{shapes_dir}:ground:train", task=get_task("ground"))
    assert report["bad"] == 0 and report["records"] > 120 and report["images"] == 120
    s = stats(f"shapes:{shapes_dir}:vqa", split="train")
    recs = _jsonl(shapes_dir / "vqa_train.jsonl")
    assert s["records"] == len(recs) and s["images"] == 120
    assert s["answers"]["top"] == dict(Counter(r["answers"][0] for r in recs).most_common(20))
    assert s["question_type"]["distinct"] == 6
    assert s["image_size"]["width"] == {"min": 64, "median": 64, "mean": 64, "max": 64}
    caps = stats(f"shapes:{shapes_dir}")
    assert caps["captions_per_image"]["min"] == 5 and caps["text_words"]["captions_zh"]["min"] > 5


def test_hf_datasets_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"image": [str(tmp_path / "a.png")], "sentence": ["hello"]})
    (tmp_path / "a.png").write_bytes(_png_bytes())
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    recs = list(open_dataset({"format": "hf", "path": str(tmp_path / "hf"), "fields": {"caption": "sentence"}}))
    assert recs == [{"image": str(tmp_path / "a.png"), "caption": "hello", "id": "0"}]


def test_hf_without_datasets_says_what_to_install(tmp_path):
    try:
        import datasets  # noqa: F401
        pytest.skip("datasets is installed")
    except ImportError:
        pass
    (tmp_path / "hf").mkdir()
    with pytest.raises(DataError, match="pip install datasets"):
        open_dataset(f"hf:{tmp_path}/hf")
