"""The demo's HTML report: one self-contained file (images inlined), numbers read from the
metrics JSON files `polymodal eval` wrote, so the report and the files always agree."""
from __future__ import annotations

import base64
import html
import io
import json
import platform
import time
from pathlib import Path

#: the headline metrics of each evaluation, in table order: (key, label, higher is better)
HEADLINES = {
    "vqa": [("accuracy", "VQA accuracy", True)] + [
        (f"accuracy[question_type={t}]", f"VQA accuracy, {t} questions", True)
        for t in ("color", "shape", "count", "exist", "size", "relation")],
    "captioning": [("bleu_4", "BLEU-4", True), ("cider_d", "CIDEr-D", True), ("meteor", "METEOR", True),
                   ("chair_i", "CHAIR-i (hallucinated mentions)", False), ("chair_s", "CHAIR-s", False),
                   ("object_recall", "object recall", True)],
    "captioning_zh": [("bleu_4_char", "BLEU-4 (characters)", True), ("cider_d_char", "CIDEr-D (characters)", True),
                      ("chair_i", "CHAIR-i", False), ("object_recall", "object recall", True)],
    "retrieval": [("i2t_r1", "image→text R@1", True), ("t2i_r1", "text→image R@1", True),
                  ("t2i_r5", "text→image R@5", True), ("r_mean", "mean recall", True),
                  # before re-ranking (when the evaluation re-ranked: docs/evaluation.md)
                  ("embedding_i2t_r1", "image→text R@1, embeddings alone", True),
                  ("embedding_t2i_r1", "text→image R@1, embeddings alone", True),
                  # what an ideal model scores: many captions fit several images (docs/evaluation.md)
                  ("ceiling_i2t_r1", "image→text R@1 ceiling", True), ("ceiling_t2i_r1", "text→image R@1 ceiling", True)],
    "grounding": [("accuracy@0.5", "referring accuracy@0.5", True), ("largest_object/accuracy@0.5",
                                                                      "largest-object baseline accuracy@0.5", True),
                  ("random_object/accuracy@0.5", "random-object baseline accuracy@0.5", True)],
    "detection": [("AP@0.5", "detection AP@0.5 (COCOeval)", True), ("AP@[.5:.95]", "detection AP@[.5:.95]", True),
                  ("fp_per_image@0.5[empty]", "boxes per query matching nothing (score ≥ 0.5)", False)],
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d232a;line-height:1.45}
h1{margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:1px solid #dde;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.6rem 0} td,th{border:1px solid #d5d9e0;padding:.3rem .6rem;text-align:left}
th{background:#f3f5f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#6b7380} .good{color:#146c2e;font-weight:600}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:1rem}
.card{border:1px solid #d5d9e0;border-radius:8px;padding:.6rem;font-size:.85rem}
.card img{width:100%;image-rendering:pixelated;border-radius:4px}
.ok{color:#146c2e} .bad{color:#b3261e} code,pre{background:#f3f5f8;border-radius:4px}
pre{padding:.6rem;overflow-x:auto;font-size:.8rem} .curves img{max-width:100%;border:1px solid #eee}
"""


def _img(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _png(image, scale: int = 4) -> str:
    from PIL import Image

    im = image if isinstance(image, Image.Image) else Image.open(image)
    im = im.convert("RGB").resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return _img(buf.getvalue())


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def metrics_rows(out: Path) -> list[dict]:
    """One row per evaluation JSON: task, split, n, and the headline metrics with their baselines."""
    rows = []
    for f in sorted((out / "metrics").glob("*.json")):
        res = json.loads(f.read_text())
        key = "captioning_zh" if res["task"] == "captioning" and "bleu_4_char" in res["metrics"] else res["task"]
        for metric, label, higher in HEADLINES.get(key, []):
            if metric.startswith("embedding_") and metric not in res["metrics"]:
                continue   # not re-ranked: the recalls above are the embeddings'
            rows.append({"file": f.name, "task": key.replace("captioning_zh", "captioning (Chinese)"),
                         "split": res["split"], "n": res["n"], "metric": label, "value": res["metrics"].get(metric),
                         "baseline": None if metric.startswith("ceiling") else (res.get("baseline") or {}).get(metric),
                         "blind": (res.get("blind") or {}).get(metric),
                         "higher": higher})
    return rows


def _gallery(out: Path, n: int = 8) -> str:
    import polymodal
    from polymodal.data import open_dataset
    from polymodal.demo import CAPTION_GENERATION

    runs = out / "runs"
    caps = list(open_dataset(f"shapes:{out / 'data'}:captions", "test"))[:n]
    vqa = list(open_dataset(f"shapes:{out / 'data'}:vqa", "test"))
    by_image: dict[str, list] = {}
    for q in vqa:
        by_image.setdefault(q["image_id"], []).append(q)
    images = [c["image"] for c in caps]
    en = polymodal.load(runs / "caption_en" / "best").caption(images, **CAPTION_GENERATION["en"])
    zh = polymodal.load(runs / "caption_zh" / "best").caption(images, **CAPTION_GENERATION["zh"])
    qs = [(by_image.get(c["id"]) or [None])[0] for c in caps]
    asked = [(c["image"], q) for c, q in zip(caps, qs) if q is not None]
    answers = polymodal.load(runs / "vqa" / "best").answer([a for a, _ in asked], [q["question"] for _, q in asked])
    ans_iter = iter(answers)
    cards = []
    for c, e, z, q in zip(caps, en, zh, qs):
        qa = ""
        if q is not None:
            a = next(ans_iter)
            ok = a in q["answers"]
            qa = (f"<p><b>Q:</b> {html.escape(q['question'])}<br><b>A:</b> <span class='{'ok' if ok else 'bad'}'>"
                  f"{html.escape(a)}</span> <span class='muted'>(truth: {html.escape(q['answers'][0])})</span></p>")
        cards.append(f"<div class='card'><img src='{_png(c['image'])}' alt='test image {html.escape(c['id'])}'>"
                     f"<p><b>EN:</b> {html.escape(e)}<br><span class='muted'>truth: {html.escape(c['captions'][0])}</span></p>"
                     f"<p><b>ZH:</b> {html.escape(z)}<br><span class='muted'>truth: {html.escape(c['captions_zh'][0])}</span></p>"
                     f"{qa}</div>")
    return "<div class='gallery'>" + "".join(cards) + "</div>"


def _boxes_section(out: Path, n: int = 6) -> str:
    """Drawn boxes on test images: the text detector's box for a referring expression, and its
    boxes (score >= 0.5) for a detection phrase, beside the truth."""
    import polymodal
    from polymodal.data import open_dataset
    from polymodal.infer.draw import draw_boxes

    ckpt = out / "runs" / "ground" / "best"
    if not ckpt.is_dir():
        return ""
    model = polymodal.load(ckpt)
    refs = list(open_dataset(f"shapes:{out / 'data'}:ground", "test"))
    phrases = [p for p in open_dataset(f"shapes:{out / 'data'}:detect", "test") if p["boxes"]]
    refs = list({r["image_id"]: r for r in refs}.values())[:n]               # one per image
    by_image = {p["image_id"]: p for p in phrases}
    pairs = [(r, by_image[r["image_id"]]) for r in refs if r["image_id"] in by_image]
    grounded = model.ground([r["image"] for r, _ in pairs], [r["ref"] for r, _ in pairs])
    found = model.detect([p["image"] for _, p in pairs], [p["text"] for _, p in pairs], threshold=0.5)
    cards = []
    for (r, p), g, f in zip(pairs, grounded, found):
        left = draw_boxes(r["image"], [g["box"]], [f"{g['score']:.2f}"], scale=4)
        right = draw_boxes(p["image"], [b["box"] for b in f], [f"{b['score']:.2f}" for b in f], scale=4)
        cards.append(f"<div class='card'><img src='{_png(left, 1)}' alt='grounding {html.escape(r['id'])}'>"
                     f"<p><b>{html.escape(r['ref'])}</b><br><span class='muted'>truth box {r['box']}, "
                     f"found {[round(v) for v in g['box']]}</span></p>"
                     f"<img src='{_png(right, 1)}' alt='detection {html.escape(p['id'])}'>"
                     f"<p><b>{html.escape(p['text'])}</b>: {len(f)} box(es) at score ≥ 0.5"
                     f"<br><span class='muted'>truth: {len(p['boxes'])} object(s)</span></p></div>")
    return ("<h2>Grounding and detection</h2><p class='muted'>The text-queried detector on test images: the best "
            "box for a referring expression (top), every box scoring at least 0.5 for a phrase (bottom).</p>"
            "<div class='gallery'>" + "".join(cards) + "</div>")


def write_report(out: Path, stages, timings: dict, mode: str) -> Path:
    """Write out/report.html and return its path."""
    import torch

    rows = metrics_rows(out)
    table = ["<table><tr><th>task</th><th>split</th><th>n</th><th>metric</th><th>model</th>"
             "<th>shuffled baseline</th><th>question-only baseline</th></tr>"]
    for r in rows:
        better = (r["value"] is not None and r["baseline"] is not None
                  and (r["value"] > r["baseline"] if r["higher"] else r["value"] < r["baseline"]))
        table.append(f"<tr><td>{html.escape(r['task'])}</td><td>{r['split']}</td><td class='num'>{r['n']}</td>"
                     f"<td>{html.escape(r['metric'])}</td><td class='num{' good' if better else ''}'>{_fmt(r['value'])}</td>"
                     f"<td class='num muted'>{_fmt(r['baseline'])}</td>"
                     f"<td class='num muted'>{_fmt(r['blind']) if r['blind'] is not None else ''}</td></tr>")
    table.append("</table>")
    curves = []
    for s in stages:
        png = out / "runs" / s.name / "curves.png"
        if png.is_file():
            curves.append(f"<h3>{html.escape(s.title)}</h3><img src='{_img(png.read_bytes())}' alt='curves {s.name}'>")
    times = "".join(f"<tr><td>{html.escape(s.title)}</td><td class='num'>{timings.get(s.name, 0):.1f} s</td></tr>"
                    for s in stages if s.name in timings)
    total = sum(v for k, v in timings.items())
    commands = "".join(f"<h3>{i}. {html.escape(s.title)}</h3><pre>{html.escape(chr(10).join(s.commands))}</pre>"
                       for i, s in enumerate(stages, 1))
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>polymodal demo report</title><style>{CSS}</style></head><body>
<h1>polymodal demo report</h1>
<p class="muted">{mode} run · {time.strftime('%Y-%m-%d %H:%M')} · {platform.processor() or platform.machine()} ·
torch {torch.__version__} · {torch.get_num_threads()} threads · total {total:.0f} s</p>
<p>Models trained from scratch on the generated shapes world (exact ground truth): a GPT-2-style captioner,
pretrained with LM on English and Chinese captions while its tower learns to name the object on each image
token (object-level supervision); a VQA model with question-guided hops that starts from the captioner's tower;
a retrieval dual encoder on the captioner's frozen tower, pooling per object, with a text tower trained by
image-text contrast (ITC), its candidates re-ranked by the English captioner's likelihood; English and Chinese
captioners: the pretrained decoder on the VQA model's tower, fine-tuned per language. Every number below is read from the JSON that
<code>polymodal eval</code> wrote (<code>{html.escape(str(out / 'metrics'))}</code>); the shuffled baseline
scores the same predictions given to other test items (chance level); the question-only baseline answers each
VQA question with its most common training answer, never looking at the image. <b>comp</b> is the compositional split:
colour–shape pairs never seen in training.</p>
<h2>Metrics</h2>{''.join(table)}
<h2>Test images</h2><p class="muted">Generated captions (beam 3) and answers next to the truth.</p>{_gallery(out)}
{_heat_maps(out)}
{_boxes_section(out)}
<h2>Training curves</h2><div class="curves">{''.join(curves)}</div>
<h2>Time per stage</h2><table><tr><th>stage</th><th>time</th></tr>{times}</table>
<h2>Reproduce by hand</h2><p>Each stage is one command (configs in <code>{html.escape(str(out / 'configs'))}</code>):</p>
{commands}
</body></html>"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _heat_maps(out: Path, n: int = 3) -> str:
    """"What the models looked at": heat maps (polymodal.explain) of the VQA model for a few test
    questions that name one object, and of the English captioner per generated word."""
    import polymodal
    from polymodal.data import open_dataset
    from polymodal.explain import render

    runs = out / "runs"
    qs = [q for q in open_dataset(f"shapes:{out / 'data'}:vqa", "test")
          if q.get("question_type") in ("color", "shape")][:n]
    caps = list(open_dataset(f"shapes:{out / 'data'}:captions", "test"))[:2]
    exs = polymodal.load(runs / "vqa" / "best").explain([q["image"] for q in qs], [q["question"] for q in qs],
                                                         method="attention")
    exs += polymodal.load(runs / "caption_en" / "best").explain([c["image"] for c in caps], max_new_tokens=24)
    cards = []
    for ex, rec in zip(exs, qs + caps):
        buf = io.BytesIO()
        render(ex, rec["image"]).save(buf, format="PNG")
        cards.append(f"<div class='card'><img src='{_img(buf.getvalue())}' alt='heat map {html.escape(rec['id'])}'></div>")
    return ("<h2>What the models looked at</h2><p class='muted'>Heat maps over the test images "
            "(<code>polymodal explain</code>, docs/interpretability.md): the VQA model's attention over the image "
            "for a question (the map should sit on the object the question names), and the captioner's "
            "gradient × cross-attention for the whole caption and for each word.</p>"
            "<div class='gallery' style='grid-template-columns:1fr 1fr'>" + "".join(cards) + "</div>")
