"""The research script behind docs/results.md's VQA ablation ("what each change bought").

A standalone, plain-PyTorch model of the shapes world's VQA (its own word tokenizer, conv stem,
text transformer and fusions), fast to vary: CoordConv on/off (--no-coord), question-guided
hops with supervised attention (--att-sup) and dense object supervision (--dense), the readout
(--head mlp | film | bilinear | bilinear2), a joint transformer instead of hops (--fusion joint),
one question type only (--only relation), exact object positions in place of the hops'
(--oracle). What it found is built into the package as `conv_stem(coords=True)`, the
`hop_attention` fusion and the `hop_attention` / `object_attributes` objectives.

    PYTHONPATH=src python docs/research/vqa_lab.py --head bilinear2 --att-sup 1 --dense 1 --steps 1500 --threads 1
"""
import argparse, json, math, random, re, sys, time
from collections import Counter, defaultdict
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F

from polymodal.data import shapes

COLORS = list(shapes.COLORS); SHAPES = list(shapes.SHAPES); SIZES = list(shapes.SIZES)


def build(n, seed, split="train", offset=0):
    imgs, objs, qs = [], [], []
    for i in range(n):
        img, scene, text = shapes.make_example(offset + i, seed, 64, split)
        imgs.append(np.asarray(img))
        objs.append([(o["center"][0] / 64, o["center"][1] / 64, COLORS.index(o["color"]), SHAPES.index(o["shape"]),
                      SIZES.index(o["size"])) for o in scene["objects"]])
        for q in text["qa"]:
            qs.append((i, q["question"], q["answer"], q["question_type"], q["objects"]))
    x = torch.tensor(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()  # uint8 (N,3,64,64)
    return x, objs, qs


def tok(s):
    return re.findall(r"[a-z0-9]+|\?", s.lower())


class Vocab:
    def __init__(self, texts):
        c = Counter(w for t in texts for w in tok(t))
        self.itos = ["[pad]", "[cls]", "[unk]"] + sorted(c)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def encode(self, texts, L=24):
        out = torch.zeros(len(texts), L, dtype=torch.long)
        for k, t in enumerate(texts):
            ids = [1] + [self.stoi.get(w, 2) for w in tok(t)][: L - 1]
            out[k, : len(ids)] = torch.tensor(ids)
        return out


def coords(h, w, device):
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=device), torch.linspace(-1, 1, w, device=device), indexing="ij")
    return torch.stack([xs, ys], 0)  # (2,h,w)


class Vision(nn.Module):
    def __init__(self, D, coord=True, width=32):
        super().__init__()
        self.coord = coord
        c_in = 3 + (2 if coord else 0)
        chans = [width, 2 * width, D]
        layers = []
        for i, c in enumerate(chans):
            layers += [nn.Conv2d(c_in + (2 if coord and i > 0 else 0), c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.GELU()]
            c_in = c
        self.layers = nn.ModuleList([nn.Sequential(*layers[i * 3:(i + 1) * 3]) for i in range(3)])
        self.refine = nn.Sequential(nn.Conv2d(D + (2 if coord else 0), D, 3, padding=1), nn.BatchNorm2d(D), nn.GELU())
        self.pos = nn.Parameter(torch.zeros(64, D)) if coord else None
        self.norm = nn.LayerNorm(D)

    def forward(self, x):
        for l in self.layers:
            if self.coord:
                x = torch.cat([x, coords(*x.shape[2:], x.device).expand(x.shape[0], -1, -1, -1)], 1)
            x = l(x)
        if self.coord:
            x = torch.cat([x, coords(*x.shape[2:], x.device).expand(x.shape[0], -1, -1, -1)], 1)
        x = x + 0 if False else self.refine(x)
        t = x.flatten(2).transpose(1, 2)  # (B,64,D)
        if self.pos is not None:
            t = t + self.pos
        return self.norm(t)


class Text(nn.Module):
    def __init__(self, V, D, layers=2, L=24):
        super().__init__()
        self.emb = nn.Embedding(V, D); self.pos = nn.Parameter(torch.randn(L, D) * 0.02)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, 4, 4 * D, 0.0, batch_first=True, norm_first=True), layers)
        self.norm = nn.LayerNorm(D)

    def forward(self, ids):
        m = ids != 0
        return self.norm(self.enc(self.emb(ids) + self.pos[: ids.shape[1]], src_key_padding_mask=~m)), m


HEAD = "mlp"
COUNT_SCALE = float(__import__("os").environ.get("CS", "1"))


class Hops(nn.Module):
    """K question-guided hops over coordinate-tagged cells; each returns features, position, count."""

    def __init__(self, D, K=2, n_ans=20):
        super().__init__()
        self.K = K
        self.hq = nn.Parameter(torch.randn(K, D) * 0.02)
        self.qk = nn.Linear(D, D); self.ck = nn.Linear(D, D); self.cv = nn.Linear(D, D)
        self.gbias = nn.Parameter(torch.zeros(K))
        self.qmix = nn.Linear(2 * D, D)
        inp = D + K * (D + 2 + 1) + 2
        self.head = HEAD
        if HEAD == "bilinear":
            self.qa = nn.Linear(2 * D, D); self.fb = nn.Linear(D + 2 + 4, D)
            inp = inp + D
        if HEAD == "bilinear2":
            self.qa = nn.Linear(2 * D, D); self.fb = nn.Linear(D, D)
            self.qp = nn.Linear(2 * D, D); self.fp = nn.Linear(6, D)
            inp = inp + 2 * D
        if HEAD == "film":
            self.h1 = nn.Linear(inp - D, 2 * D); self.film = nn.Linear(2 * D, 4 * D)
            self.out = nn.Sequential(nn.GELU(), nn.Linear(2 * D, 2 * D), nn.GELU(), nn.Linear(2 * D, n_ans))
        else:
            self.out = nn.Sequential(nn.Linear(inp, 2 * D), nn.GELU(), nn.Linear(2 * D, 2 * D), nn.GELU(), nn.Linear(2 * D, n_ans))

    def forward(self, cells, pos_xy, txt, tmask, img_idx, oracle=None):
        # cells (Bi,N,D) per image; gathered per question
        c = cells[img_idx]  # (B,N,D)
        B, N, D = c.shape
        qcls = txt[:, 0]
        ck, cv = self.ck(c), self.cv(c)
        feats, attns, gates = [qcls], [], []
        prev = torch.zeros_like(qcls)
        outs_pos = []
        for k in range(self.K):
            # word attention: which words name hop k's object
            wl = (txt @ (self.hq[k] + prev).unsqueeze(-1)).squeeze(-1) / math.sqrt(D)
            wl = wl.masked_fill(~tmask, -1e4)
            q = (wl.softmax(-1).unsqueeze(-1) * txt).sum(1)  # (B,D)
            q = self.qmix(torch.cat([q, qcls], -1))
            logits = (ck @ self.qk(q).unsqueeze(-1)).squeeze(-1) / math.sqrt(D)  # (B,N)
            a = logits.softmax(-1)
            g = torch.sigmoid(logits + self.gbias[k])
            v = (a.unsqueeze(-1) * cv).sum(1)
            p = a @ pos_xy  # (B,2)
            if oracle is not None:
                p = oracle[:, k]
            feats += [v, p, COUNT_SCALE * g.sum(-1, keepdim=True)]
            outs_pos.append(p)
            attns.append(logits); gates.append(logits + self.gbias[k])
            prev = v
        feats.append(outs_pos[0] - outs_pos[-1])
        if self.head == "bilinear2":
            mf = tmask.unsqueeze(-1).float()
            qq = torch.cat([qcls, (txt * mf).sum(1) / mf.sum(1)], -1)
            v0, vl = feats[1], feats[1 + 3 * (self.K - 1)]
            zf = self.qa(qq) * self.fb(v0 - vl)
            zp = self.qp(qq) * self.fp(torch.cat([outs_pos[0] - outs_pos[-1], outs_pos[0], outs_pos[-1]], -1))
            return self.out(torch.cat(feats + [zf, zp], -1)), attns, gates
        if self.head == "bilinear":
            mf = tmask.unsqueeze(-1).float()
            qbag = (txt * mf).sum(1) / mf.sum(1)
            v0, vl = feats[1], feats[-5 + 0] if False else feats[1 + 3 * (self.K - 1)]
            z = self.qa(torch.cat([qcls, qbag], -1)) * self.fb(torch.cat([v0 - vl, outs_pos[0] - outs_pos[-1], outs_pos[0], outs_pos[-1]], -1))
            return self.out(torch.cat(feats + [z], -1)), attns, gates
        if self.head == "film":
            mf = tmask.unsqueeze(-1).float()
            qbag = (txt * mf).sum(1) / mf.sum(1)
            g, b = self.film(torch.cat([qcls, qbag], -1)).chunk(2, -1)
            h = F.gelu(self.h1(torch.cat(feats[1:], -1))) * (1 + g) + b
            return self.out(h), attns, gates
        return self.out(torch.cat(feats, -1)), attns, gates


class Joint(nn.Module):
    """cross_transformer-like: joint self-attention over [cells; question], CLS -> answer."""

    def __init__(self, D, layers=2, n_ans=20):
        super().__init__()
        self.mod = nn.Parameter(torch.randn(2, D) * 0.02)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, 4, 4 * D, 0.0, batch_first=True, norm_first=True), layers)
        self.out = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, n_ans))

    def forward(self, cells, pos_xy, txt, tmask, img_idx):
        c = cells[img_idx]
        x = torch.cat([txt + self.mod[0], c + self.mod[1]], 1)
        m = torch.cat([tmask, torch.ones(c.shape[:2], dtype=torch.bool, device=c.device)], 1)
        y = self.enc(x, src_key_padding_mask=~m)
        return self.out(y[:, 0]), [], []


class Model(nn.Module):
    def __init__(self, V, n_ans, D=128, fusion="hops", coord=True, K=2, tlayers=2):
        super().__init__()
        self.vision = Vision(D, coord)
        self.text = Text(V, D, tlayers)
        self.fusion = Hops(D, K, n_ans) if fusion == "hops" else Joint(D, 2, n_ans)
        self.dense = nn.Linear(D, 9 + 6 + 3)
        g = coords(8, 8, "cpu").flatten(1).t()  # (64,2) x,y in [-1,1]
        self.register_buffer("pos_xy", g)

    def forward(self, pix, ids, img_idx, oracle=None):
        cells = self.vision(pix)
        txt, m = self.text(ids)
        logits, attns, gates = self.fusion(cells, self.pos_xy, txt, m, img_idx, oracle) if oracle is not None else self.fusion(cells, self.pos_xy, txt, m, img_idx)
        return logits, attns, gates, cells


def cell_of(cx, cy):
    return min(7, int(cy * 8)) * 8 + min(7, int(cx * 8))


def dense_targets(objs_list, idx):
    t = torch.zeros(len(idx), 64, 3, dtype=torch.long)  # 0 = background
    for b, i in enumerate(idx):
        for (cx, cy, col, sh, sz) in objs_list[i]:
            t[b, cell_of(cx, cy)] = torch.tensor([col + 1, sh + 1, sz + 1])
    return t


def run(args):
    torch.manual_seed(args.seed); random.seed(args.seed)
    dev = torch.device(args.device)
    t0 = time.time()
    xtr, otr, qtr = build(args.n, args.world_seed, "train")
    xte, ote, qte = build(args.n_test, args.world_seed, "test", offset=10 ** 6)
    if args.only:
        keep = set(args.only.split(","))
        qtr = [q for q in qtr if q[3] in keep]; qte = [q for q in qte if q[3] in keep]
    print(f"data {time.time() - t0:.1f}s, {len(qtr)} train q, {len(qte)} test q", flush=True)
    vocab = Vocab([q[1] for q in qtr])
    answers = sorted({q[2] for q in qtr} | set(shapes.ANSWERS))
    a2i = {a: i for i, a in enumerate(answers)}
    model = Model(len(vocab.itos), len(answers), args.dim, args.fusion, not args.no_coord, args.hops).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.05)
    by_img = defaultdict(list)
    for k, q in enumerate(qtr):
        by_img[q[0]].append(k)
    mean = torch.tensor([0.5, 0.5, 0.5], device=dev).view(1, 3, 1, 1)

    def batch(qs, imgs_x, objs_l, qidx):
        img_ids = sorted({qs[k][0] for k in qidx})
        pos = {i: j for j, i in enumerate(img_ids)}
        pix = (imgs_x[img_ids].to(dev).float() / 255 - mean) / 0.5
        ids = vocab.encode([qs[k][1] for k in qidx]).to(dev)
        ii = torch.tensor([pos[qs[k][0]] for k in qidx], device=dev)
        y = torch.tensor([a2i.get(qs[k][2], 0) for k in qidx], device=dev)
        return img_ids, pix, ids, ii, y

    def evaluate(qs, imgs_x, objs_l, limit=None):
        model.eval()
        per = defaultdict(lambda: [0, 0])
        order = list(range(len(qs)))[:limit]
        with torch.no_grad():
            for s in range(0, len(order), 512):
                qidx = order[s:s + 512]
                _, pix, ids, ii, y = batch(qs, imgs_x, objs_l, qidx)
                lg, attns, _, _ = model(pix, ids, ii)
                pred = lg.argmax(-1)
                for k, p, t in zip(qidx, pred.tolist(), y.tolist()):
                    per[qs[k][3]][0] += p == t; per[qs[k][3]][1] += 1
                for h, at in enumerate(attns):
                    am = at.argmax(-1).tolist()
                    for b, k in enumerate(qidx):
                        hops = qs[k][4]
                        if h < len(hops) and len(hops[h]) == 1:
                            cx, cy = objs_l[qs[k][0]][hops[h][0]][:2]
                            key = f"hop{h}_{qs[k][3]}"
                            per[key][0] += am[b] == cell_of(cx, cy); per[key][1] += 1
        model.train()
        main = {k: v for k, v in per.items() if not k.startswith("hop")}
        tot = sum(v[0] for v in main.values()) / sum(v[1] for v in main.values())
        return tot, {k: round(v[0] / v[1], 3) for k, v in sorted(per.items())}

    img_list = list(by_img)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        imgs = random.sample(img_list, args.images_per_batch)
        qidx = [k for i in imgs for k in by_img[i]]
        img_ids, pix, ids, ii, y = batch(qtr, xtr, otr, qidx)
        orc = None
        if args.oracle:
            orc = torch.zeros(len(qidx), 2, 2, device=dev)
            for b, k in enumerate(qidx):
                for h, hop in enumerate(qtr[k][4][:2]):
                    if hop:
                        cx, cy = otr[qtr[k][0]][hop[0]][:2]
                        orc[b, h] = torch.tensor([cx * 2 - 1, cy * 2 - 1])
        logits, attns, gates, cells = model(pix, ids, ii, orc)
        loss = F.cross_entropy(logits, y)
        logs = {"vqa": loss.item()}
        if args.att_sup and attns:
            al = 0.0
            for h, (lg, gl) in enumerate(zip(attns, gates)):
                tgt = torch.zeros_like(lg)
                has = torch.zeros(len(qidx), dtype=torch.bool, device=dev)
                for b, k in enumerate(qidx):
                    hops = qtr[k][4]
                    if h < len(hops):
                        has[b] = True
                        for o in hops[h]:
                            cx, cy = otr[qtr[k][0]][o][:2]
                            tgt[b, cell_of(cx, cy)] = 1
                if has.any():
                    nonempty = has & (tgt.sum(-1) > 0)
                    if nonempty.any():
                        lsm = lg[nonempty].log_softmax(-1)
                        al = al - torch.logsumexp(lsm.masked_fill(tgt[nonempty] == 0, -1e4), -1).mean()
                    al = al + F.binary_cross_entropy_with_logits(gl[has], tgt[has])
            loss = loss + args.att_sup * al
            logs["att"] = float(al)
        if args.dense:
            dl = model.dense(cells)  # (Bi,64,18)
            t = dense_targets(otr, img_ids).to(dev)
            d = (F.cross_entropy(dl[..., :9].reshape(-1, 9), t[..., 0].reshape(-1))
                 + F.cross_entropy(dl[..., 9:15].reshape(-1, 6), t[..., 1].reshape(-1))
                 + F.cross_entropy(dl[..., 15:].reshape(-1, 3), t[..., 2].reshape(-1)))
            loss = loss + args.dense * d
            logs["dense"] = d.item()
        opt.zero_grad(); loss.backward(); nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step()
        if step % args.log_every == 0 or step == args.steps:
            el = time.time() - t0
            acc, per = evaluate(qte, xte, ote, limit=2000)
            print(json.dumps({"step": step, "s": round(el, 1), "qps": round(step * len(qidx) / el), **{k: round(v, 3) for k, v in logs.items()},
                              "test": round(acc, 3), **per}), flush=True)
    acc, per = evaluate(qte, xte, ote)
    print("FINAL", json.dumps({"variant": vars(args), "test": round(acc, 4), "per": per, "train_s": round(time.time() - t0, 1)}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=3200); p.add_argument("--n-test", type=int, default=400)
    p.add_argument("--world-seed", type=int, default=0); p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=600); p.add_argument("--images-per-batch", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-3); p.add_argument("--dim", type=int, default=128)
    p.add_argument("--fusion", default="hops"); p.add_argument("--hops", type=int, default=2)
    p.add_argument("--no-coord", action="store_true"); p.add_argument("--att-sup", type=float, default=0.0)
    p.add_argument("--dense", type=float, default=0.0); p.add_argument("--device", default="cpu")
    p.add_argument("--log-every", type=int, default=100); p.add_argument("--threads", type=int, default=0)
    p.add_argument("--head", default="mlp"); p.add_argument("--only", default=""); p.add_argument("--oracle", action="store_true")
    a = p.parse_args()
    global HEAD
    HEAD = a.head
    if a.threads:
        torch.set_num_threads(a.threads)
    run(a)


if __name__ == "__main__":
    main()
