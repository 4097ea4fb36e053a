"""Relation XOR on clean synthetic tokens: does a fusion learn answer = word x sign(dx) when the
image tokens are exact (16 tokens, two coloured objects) and the hops are supervised?

    PYTHONPATH=src python docs/research/vqa_xor.py package   # or: lab
"""
import os, sys, math, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1)
from polymodal.models.base import Features
from polymodal.models.fusion import HopAttentionFusion
from polymodal.models.heads import ClassifierHead
import vqa_lab as L

D, N, B = 64, 16, 128
torch.manual_seed(0)
# words: 0 pad 1 cls 2 is 3 the 4..11 colours 12 left 13 right ; question: cls is the c1 left the c2
emb_fixed = torch.randn(14, D)
grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, 4), torch.linspace(0, 1, 4), indexing="xy"), -1).reshape(N, 2)


def batch():
    c = torch.stack([torch.randperm(8)[:2] for _ in range(B)])  # two colours
    cells = torch.stack([torch.randperm(N)[:2] for _ in range(B)])
    img = torch.randn(B, N, D) * 0.1
    colour_vecs = emb_fixed[4:12]
    for b in range(B):
        for k in range(2):
            img[b, cells[b, k]] += colour_vecs[c[b, k]]
    rel = torch.randint(0, 2, (B,))
    ids = torch.stack([torch.tensor([1, 2, 3, 4 + c[b, 0], 12 + rel[b], 3, 4 + c[b, 1]]) for b in range(B)])
    dx = grid[cells[:, 0], 0] - grid[cells[:, 1], 0]
    truth = torch.where(rel == 0, dx < 0, dx > 0)
    keep = dx != 0
    return img[keep], ids[keep], truth[keep].long(), cells[keep]


class Text(nn.Module):
    def __init__(self):
        super().__init__()
        self.t = L.Text(14, D, 1, 8)

    def forward(self, ids):
        return self.t(ids)


def run(kind, steps=600):
    torch.manual_seed(1)
    text = Text()
    if kind == "package":
        f = HopAttentionFusion(D, D, D, 2); head = ClassifierHead(D, 2)
        mods = nn.ModuleList([text, f, head])
    else:
        L.HEAD = "bilinear2"; f = L.Hops(D, 2, 2); mods = nn.ModuleList([text, f])
    opt = torch.optim.AdamW(mods.parameters(), 2e-3, weight_decay=0.01)
    for s in range(steps + 1):
        img, ids, y, cells = batch()
        txt, m = text(ids)
        if kind == "package":
            out = f(Features(img, torch.ones(img.shape[:2], dtype=torch.bool), img.mean(1), grid), Features(txt, m, txt[:, 0]))
            logits, att = head(out.pooled), out.attention
        else:
            logits, a, g = f(img, grid * 2 - 1, txt, m, torch.arange(len(img)))
            att = torch.stack(a, 1)
        loss = F.cross_entropy(logits, y)
        hop = F.cross_entropy(att.flatten(0, 1), cells.flatten())
        opt.zero_grad(); (loss + hop).backward(); nn.utils.clip_grad_norm_(mods.parameters(), 1.0); opt.step()
        if s % 100 == 0:
            acc = (logits.argmax(-1) == y).float().mean().item()
            hacc = (att.argmax(-1) == cells).float().mean().item()
            print(kind, s, f"loss {loss.item():.3f} acc {acc:.2f} hop {hacc:.2f}", flush=True)


run(sys.argv[1])
