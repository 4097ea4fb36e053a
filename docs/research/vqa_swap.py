"""Why relation questions stay at chance in the package: swap package parts into vqa_lab.py.

The research script `vqa_lab.py` learns "Is the A left of the B?" (relation questions alone,
`--only relation`) with its own fusion; the package's `hop_attention` fusion, given the same
data, tower and supervision, does not. This script runs vqa_lab.py's training with one part
replaced at a time (docs/results.md, "Why relation questions stay at chance"):

    --text lab|bert          the lab's text transformer, or the package's `bert` tower
    --fusion lab|package|lab-hops
                             lab: vqa_lab's hops, readout straight to the answers (3 layers);
                             package: `HopAttentionFusion` + the package's `ClassifierHead`;
                             lab-hops: vqa_lab's hops with the readout ending in `dim`, then a head
    --variant VARIANT        for --fusion package: none | no-final-norm | no-projections |
                             one-layer | one-layer-no-norm | lab-readout; for --fusion lab-hops:
                             classifier | linear (the head after the readout)

    PYTHONPATH=src python docs/research/vqa_swap.py --fusion package --text bert \\
        --head bilinear2 --att-sup 1 --dense 1 --only relation --images-per-batch 32 \\
        --steps 1050 --log-every 175 --threads 1 --seed 0
"""
import argparse
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vqa_lab as lab  # noqa: E402

from polymodal.models.base import Features  # noqa: E402
from polymodal.models.fusion import HopAttentionFusion  # noqa: E402
from polymodal.models.heads import ClassifierHead  # noqa: E402
from polymodal.models.text import BertEncoder  # noqa: E402


class PackageFusion(nn.Module):
    """`HopAttentionFusion` + `ClassifierHead` behind vqa_lab's fusion interface."""

    def __init__(self, dim, hops, n_answers, variant="none"):
        super().__init__()
        self.fusion = HopAttentionFusion(dim, dim, dim, hops)
        self.head = ClassifierHead(dim, n_answers)
        readout_in = self.fusion.readout[0].in_features
        if variant == "no-final-norm":
            self.fusion.readout = self.fusion.readout[:-1]
        elif variant == "no-projections":
            self.fusion.img_in = self.fusion.txt_in = self.fusion.cls_in = nn.Identity()
        elif variant == "one-layer":
            self.fusion.readout = nn.Sequential(nn.Linear(readout_in, dim), nn.LayerNorm(dim))
        elif variant == "one-layer-no-norm":
            self.fusion.readout = nn.Sequential(nn.Linear(readout_in, dim), nn.GELU())
        elif variant == "lab-readout":
            self.fusion.readout = nn.Sequential(nn.Linear(readout_in, 2 * dim), nn.GELU(), nn.Linear(2 * dim, 2 * dim),
                                                nn.GELU(), nn.Linear(2 * dim, dim))
            self.head = nn.Linear(dim, n_answers)
        elif variant != "none":
            raise SystemExit(f"unknown --variant {variant!r} for --fusion package")

    def forward(self, cells, pos_xy, txt, tmask, img_idx, oracle=None):
        c = cells[img_idx]
        image = Features(c, torch.ones(c.shape[:2], dtype=torch.bool), c.mean(1), (pos_xy + 1) / 2)
        out = self.fusion(image, Features(txt, tmask, txt[:, 0]))
        attention = list(out.attention.unbind(1))  # the gate bias is inside: one list serves both losses
        return self.head(out.pooled), attention, attention


class LabHops(nn.Module):
    """vqa_lab's hops with the readout ending in `dim`, then a classifier head."""

    def __init__(self, dim, hops, n_answers, variant="classifier"):
        super().__init__()
        self.hops = lab.Hops(dim, hops, dim)
        self.head = ClassifierHead(dim, n_answers) if variant == "classifier" else nn.Linear(dim, n_answers)

    def forward(self, cells, pos_xy, txt, tmask, img_idx, oracle=None):
        z, attention, gates = self.hops(cells, pos_xy, txt, tmask, img_idx)
        return self.head(z), attention, gates


class BertText(nn.Module):
    """The package's `bert` text tower behind vqa_lab's text interface."""

    def __init__(self, vocab_size, dim):
        super().__init__()
        self.bert = BertEncoder(vocab_size=vocab_size, hidden_size=dim, num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=64)

    def forward(self, ids):
        mask = ids != 0
        return self.bert(ids, mask.long()).tokens, mask


def main():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--text", default="lab", choices=["lab", "bert"])
    p.add_argument("--fusion", default="lab", choices=["lab", "package", "lab-hops"])
    p.add_argument("--variant", default="")
    ours, rest = p.parse_known_args()
    base = lab.Model

    class Model(base):
        def __init__(self, vocab_size, n_answers, dim=128, fusion="hops", coord=True, hops=2, tlayers=2):
            super().__init__(vocab_size, n_answers, dim, fusion, coord, hops, tlayers)
            if ours.text == "bert":
                self.text = BertText(vocab_size, dim)
            if ours.fusion == "package":
                self.fusion = PackageFusion(dim, hops, n_answers, ours.variant or "none")
            elif ours.fusion == "lab-hops":
                self.fusion = LabHops(dim, hops, n_answers, ours.variant or "classifier")

    lab.Model = Model
    sys.argv = [sys.argv[0]] + rest
    lab.main()


if __name__ == "__main__":
    main()
