"""Why the demo's VQA model answered relation and size questions at chance, and what fixed it
(docs/results.md, "The comparison term").

    PYTHONPATH=src python docs/research/vqa_readout.py hops  --model DEMO/runs/vqa/best --data DEMO/data
    PYTHONPATH=src python docs/research/vqa_readout.py readouts --model DEMO/runs/vqa/best --data DEMO/data
    PYTHONPATH=src python docs/research/vqa_readout.py heads --model DEMO/runs/vqa/best --data DEMO/data

* `hops`: on the val split's relation and size questions, does what the hops found carry the
  answer? The sign of the hops' position difference on the asked axis against the named
  objects' true offset; the size the object heads read where each hop looks against the truth.
* `readouts`: the model's readout inputs, frozen, and fresh readouts trained on them for 1,500
  steps (batch 64, AdamW 2e-3): the package readout (from the checkpoint and re-initialised),
  a 3-layer MLP, and the MLP plus a product of a question vector and the hops' symbols
  (positions; with `+attr`, the attributes read at each hop) — the question vector being the
  text tower's pooled output (`cls`) or the mean of the question's input word embeddings (`bag`).
* `heads`: the object heads' accuracy on the objects of test and comp images.

Needs a `fusion_encoder` with the `hop_attention` fusion and object heads (the demo's VQA model).
"""
from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import polymodal


def _records(data, split, types=None, limit=None):
    recs = [json.loads(line) for line in open(f"{data}/vqa_{split}.jsonl")]
    recs = [r for r in recs if types is None or r["question_type"] in types]
    return recs[:limit] if limit else recs


def _run(m, data, recs, batch=128):
    """Yield (records, model output, word-embedding bag) a batch at a time."""
    model = m.model.eval()
    with torch.no_grad():
        for i in range(0, len(recs), batch):
            rb = recs[i:i + batch]
            tok = m._tokens([r["question"] for r in rb])
            out = model(m._pixels([Image.open(f"{data}/{r['image']}").convert("RGB") for r in rb]), **tok)
            e = model.text.model.get_input_embeddings()(tok["input_ids"])
            mk = tok["attention_mask"].unsqueeze(-1).float()
            yield rb, out, (e * mk).sum(1) / mk.sum(1)


def _size_index(model):
    return list(model.object_attributes).index("size")


def hops(m, data):
    model, rel_ok, size_ok, acc = m.model, [], [], {"relation": [], "size": []}
    sizes = model.object_attributes["size"]
    offset = sum(1 + len(v) for k, v in model.object_attributes.items() if k in list(model.object_attributes)[:_size_index(model)])
    for rb, out, _ in _run(m, data, _records(data, "val", ("relation", "size"))):
        att = out.fused.attention.float().softmax(-1)                                  # (B, K, N)
        xy = att @ out.image_features.positions.float()                               # (B, K, 2)
        probs = torch.cat([v.softmax(-1) for v in out.object_logits.values()], -1)
        read = (att @ probs)[..., offset + 1:offset + 1 + len(sizes)]                 # (B, K, sizes)
        for j, r in enumerate(rb):
            acc[r["question_type"]].append(model.labels[int(out.logits[j].argmax())] == r["answers"][0])
            boxes = [h[0] for h in r["question_objects"]]
            if r["question_type"] == "relation":
                ax = 0 if (" left" in r["question"] or " right" in r["question"]) else 1
                truth = (boxes[0][ax] + boxes[0][ax + 2]) - (boxes[1][ax] + boxes[1][ax + 2])
                rel_ok.append(np.sign(float(xy[j, 0, ax] - xy[j, -1, ax])) == np.sign(truth))
            else:
                objs = [next(o for o in r["objects"] if o["box"] == b) for b in boxes]
                size_ok += [int(read[j, k].argmax()) == sizes.index(o["size"]) for k, o in ((0, objs[0]), (-1, objs[1]))]
    print(f"relation: answers {np.mean(acc['relation']):.3f}; hops' offset has the true sign on the asked axis "
          f"{np.mean(rel_ok):.3f} ({len(rel_ok)} questions)")
    print(f"size: answers {np.mean(acc['size']):.3f}; heads read the right size where each hop looks "
          f"{np.mean(size_ok):.3f} ({len(size_ok)} hops)")


def readouts(m, data, steps=1500):
    model, fusion = m.model, m.model.fusion
    grab = {}
    hook = fusion.readout.register_forward_pre_hook(lambda mod, inp: grab.__setitem__("x", inp[0].detach()))
    label = {a: i for i, a in enumerate(model.labels)}
    sets = {}
    for split, limit in (("train", None), ("val", 1500)):
        xs, bags, attrs, ys, ts = [], [], [], [], []
        for rb, out, bag in _run(m, data, _records(data, split, limit=limit)):
            probs = torch.cat([v.softmax(-1) for v in out.object_logits.values()], -1)
            xs.append(grab["x"]); bags.append(bag); attrs.append(out.fused.attention.softmax(-1) @ probs)
            ys += [label.get(r["answers"][0], -1) for r in rb]; ts += [r["question_type"] for r in rb]
        sets[split] = {"x": torch.cat(xs), "bag": torch.cat(bags), "attr": torch.cat(attrs), "y": torch.tensor(ys), "t": ts}
    hook.remove()
    d, k = fusion.dim, fusion.hops
    n_labels, width = len(model.labels), sets["train"]["x"].shape[1]
    # the readout input's layout (HopAttentionFusion.forward): cls, then per hop found/xy/count, then p0 - p1, ...
    hop_at = [d + h * (d + 3) for h in range(k)]

    def symbols(b, with_attr):
        x = b["x"]
        p0, p1 = x[:, hop_at[0] + d:hop_at[0] + d + 2], x[:, hop_at[-1] + d:hop_at[-1] + d + 2]
        g = [p0 - p1, p0, p1]
        if with_attr:
            a0, a1 = b["attr"][:, 0], b["attr"][:, -1]
            g += [a0, a1, a0 - a1, a0 * a1]
        return torch.cat(g, -1)

    def mlp():
        return nn.Sequential(nn.Linear(width, 2 * d), nn.GELU(), nn.Linear(2 * d, 2 * d), nn.GELU(), nn.Linear(2 * d, n_labels))

    class Product(nn.Module):
        def __init__(self, question, with_attr):
            super().__init__()
            self.question, self.with_attr, self.mlp = question, with_attr, mlp()
            g = symbols(sets["train"], with_attr).shape[1]
            self.q, self.g, self.o = nn.Linear(d, 64), nn.Linear(g, 64), nn.Linear(64, n_labels)

        def forward(self, b):
            q = b["bag"] if self.question == "bag" else b["x"][:, :d]
            return self.mlp(b["x"]) + self.o(self.q(q) * self.g(symbols(b, self.with_attr)))

    class Package(nn.Module):
        def __init__(self, fresh):
            super().__init__()
            self.net = nn.Sequential(copy.deepcopy(fusion.readout), copy.deepcopy(model.classifier))
            for mod in self.net.modules() if fresh else []:
                if hasattr(mod, "reset_parameters") and mod is not self.net:
                    mod.reset_parameters()

        def forward(self, b):
            return self.net(b["x"])

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, b):
            return self.net(b["x"])

    variants = {"package readout (checkpoint)": lambda: Package(False), "package readout (fresh)": lambda: Package(True),
                "3-layer MLP": Plain, "MLP + cls x geometry": lambda: Product("cls", False),
                "MLP + cls x geometry+attr": lambda: Product("cls", True), "MLP + bag x geometry": lambda: Product("bag", False),
                "MLP + bag x geometry+attr": lambda: Product("bag", True)}
    tr, va = sets["train"], sets["val"]
    types = sorted(set(va["t"]))
    print("| readout | " + " | ".join(types) + " |")
    for name, make in variants.items():
        torch.manual_seed(0)
        net = make()
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.01)
        for _ in range(steps):
            idx = torch.randint(0, len(tr["y"]), (64,))
            net.train()
            loss = nn.functional.cross_entropy(net({k: tr[k][idx] for k in ("x", "bag", "attr")}), tr["y"][idx], ignore_index=-1)
            opt.zero_grad(); loss.backward(); opt.step()
        net.eval()
        with torch.no_grad():
            pred = net({k: va[k] for k in ("x", "bag", "attr")}).argmax(-1)
        acc = [float((pred[[i for i, t in enumerate(va["t"]) if t == ty]] == va["y"][[i for i, t in enumerate(va["t"]) if t == ty]]).float().mean()) for ty in types]
        print(f"| {name} | " + " | ".join(f"{a:.2f}" for a in acc) + " |", flush=True)


def heads(m, data):
    model = m.model.eval()
    for split in ("test", "comp"):
        images = list({r["image_id"]: r for r in _records(data, split)}.values())[:300]
        ok = {k: [] for k in model.object_attributes}
        with torch.no_grad():
            for i in range(0, len(images), 64):
                rb = images[i:i + 64]
                pics = [Image.open(f"{data}/{r['image']}").convert("RGB") for r in rb]
                img = model.vision(m._pixels(pics))
                logits, pos = model.object_logits(img), img.positions.float()
                for j, r in enumerate(rb):
                    for o in r["objects"]:
                        b = o["box"]
                        w, h = pics[j].size
                        t = int(((pos - torch.tensor([(b[0] + b[2]) / 2 / w, (b[1] + b[3]) / 2 / h])) ** 2).sum(-1).argmin())
                        for k, values in model.object_attributes.items():
                            ok[k].append(int(logits[k][j, t].argmax()) - 1 == values.index(o[k]))
        print(split, {k: round(float(np.mean(v)), 3) for k, v in ok.items()})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["hops", "readouts", "heads"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    {"hops": hops, "readouts": readouts, "heads": heads}[a.what](polymodal.load(a.model), a.data)
