"""Training objectives: `loss(model, batch) -> (loss, logs)`, registered in `OBJECTIVES`.

The model holds weights only; each objective reads the batch keys it names in `requires`
(see docs/training.md for the table) and calls the model's `forward`. Objectives of one step
share the plain forward pass: the trainer hands them a `Batch`, whose `forward()` runs the model
once, so ITC + ITM + MLM run the towers once, as in ALBEF (Li et al., 2021).

Pretraining: `itc`, `itm`, `mlm`, `lm`. Fine-tuning: `lm` (captioning, generative VQA,
translation), `vqa_classification`, `classification`, `itc` (retrieval). Which of them a
task trains with by default is the task's decision (`polymodal.tasks`, `Task.objectives`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from polymodal.errors import ConfigError
from polymodal.models.base import select
from polymodal.models.families import colour_free
from polymodal.registry import OBJECTIVES
from polymodal.train.feature_cache import feature_cache_off


class Objective:
    """One loss. `__call__(model, batch)` returns `(scalar loss, {name: detached scalar})`."""

    #: batch keys this objective reads
    requires: tuple[str, ...] = ()

    def check(self, model) -> None:
        """Raise ConfigError if `model` (unwrapped) lacks what this objective needs."""

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, dict]:  # pragma: no cover - abstract
        raise NotImplementedError


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


class Batch(dict):
    """One step's batch (the collator's keys) plus what its objectives share: the plain image +
    text forward pass, computed by the first objective that asks (`forward`) and reused by the others."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.output = None  # the model's output on this batch, once computed

    def forward(self, model):
        if self.output is None:
            self.output = _plain_forward(model, self)
        return self.output


def _forward(model, batch: dict):
    """The plain image + text forward: shared within a step (a `Batch`), else computed."""
    if isinstance(batch, Batch):
        return batch.forward(model)
    return _plain_forward(model, batch)


def _plain_forward(model, batch: dict):
    extra = {"image_index": batch["image_index"]} if batch.get("image_index") is not None else {}
    if getattr(getattr(model, "module", model), "decoder", None) is not None:   # (DDP wraps it in .module)
        # an encoder-decoder: the decoder reads the targets
        return model(pixel_values=batch["pixel_values"], decoder_input_ids=batch["decoder_input_ids"],
                     decoder_attention_mask=batch["decoder_attention_mask"], input_ids=batch.get("input_ids"),
                     attention_mask=batch.get("attention_mask"), **extra)
    return model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                 attention_mask=batch["attention_mask"], **extra)


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == target).float().mean().detach()


# -------------------------------------------------------------------------------------- ITC
class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for the local slice.

    Works on every backend (gloo included): the backward is an all_reduce, then a slice.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def _gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(all processes' rows, offset of this process's rows); identity outside distributed runs."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return _GatherWithGrad.apply(x), dist.get_rank() * x.shape[0]


@OBJECTIVES.register("itc")
class ITC(Objective):
    """Image-text contrastive loss: symmetric InfoNCE with a learned temperature (CLIP, ALBEF).

    In a multi-process run the embeddings of every process are gathered (with gradient), so
    the negatives are the whole global batch and the loss equals a 1-process run's.
    Rows of the same `image_ids` (several captions of one image) are not counted as negatives.
    """

    requires = ("pixel_values", "input_ids", "attention_mask")

    def check(self, model):
        _need(getattr(model, "image_proj", None) is not None,
              "objective itc needs contrastive projections: a dual_encoder, or a fusion_encoder with embed_dim > 0")

    def __call__(self, model, batch):
        out = _forward(model, batch)
        img, txt = out.image_embeds.float(), out.text_embeds.float()       # (B, E) each, normalised
        all_img, offset = _gather(img)                                     # (W*B, E)
        all_txt, _ = _gather(txt)
        scale = out.logit_scale.float()
        logits_i2t = scale * img @ all_txt.T                               # (B, W*B)
        logits_t2i = scale * txt @ all_img.T
        target = torch.arange(img.shape[0], device=img.device) + offset
        if "image_ids" in batch:
            # Another caption of the same image is not a negative: mask it out of the softmax.
            ids, _ = _gather(batch["image_ids"].float())
            same = batch["image_ids"].float()[:, None] == ids[None, :]     # (B, W*B)
            same[torch.arange(img.shape[0]), target] = False
            logits_i2t = logits_i2t.masked_fill(same, float("-inf"))
            logits_t2i = logits_t2i.masked_fill(same, float("-inf"))
        loss = (F.cross_entropy(logits_i2t, target) + F.cross_entropy(logits_t2i, target)) / 2
        return loss, {"loss": loss.detach(), "i2t_acc": _accuracy(logits_i2t, target),
                      "t2i_acc": _accuracy(logits_t2i, target), "temperature": (1.0 / scale).detach()}


# -------------------------------------------------------------------------------------- ITM
@OBJECTIVES.register("itm")
class ITM(Objective):
    """Image-text matching with hard negatives (ALBEF): for each image one negative caption, for
    each caption one negative image, sampled in proportion to the softmax of the ITC
    similarities, never from the same image (`image_ids`). Binary CE over the fusion's ITM head
    on B positives + 2B negatives.
    """

    requires = ("pixel_values", "input_ids", "attention_mask", "image_ids")

    def check(self, model):
        _need(getattr(model, "itm_head", None) is not None, "objective itm needs a fusion_encoder built with itm: true")

    def __call__(self, model, batch):
        out = _forward(model, batch)
        image, text = out.image_features, out.text_features
        b = image.tokens.shape[0]
        with torch.no_grad():
            sim = None
            if out.image_embeds is not None:
                sim = out.logit_scale.float() * out.image_embeds.float() @ out.text_embeds.float().T  # (B, B)
            rows, neg_txt, neg_img = hard_negatives(sim, batch["image_ids"])
        # Re-fuse the tower features in the negative pairings; the towers are not run again.
        logits = out.itm_logits
        if len(rows):  # (a batch of one image has no negatives)
            img_idx = torch.cat([rows, neg_img])
            txt_idx = torch.cat([neg_txt, rows])
            neg = model(image_features=select(image, img_idx), text_features=select(text, txt_idx))
            logits = torch.cat([logits, neg.itm_logits])
        logits = logits.float()                                            # (B + 2R, 2)
        target = torch.cat([torch.ones(b, dtype=torch.long, device=logits.device),
                            torch.zeros(2 * len(rows), dtype=torch.long, device=logits.device)])
        loss = F.cross_entropy(logits, target)
        return loss, {"loss": loss.detach(), "acc": _accuracy(logits, target)}


def hard_negatives(sim: torch.Tensor | None, image_ids: torch.Tensor):
    """Sample one negative caption per image and one negative image per caption (ALBEF).

    Args:
        sim: (B, B) image-to-text similarities (logits), or None for uniform sampling.
        image_ids: (B,) pairs with the same id are never negatives of each other.

    Returns:
        (rows, neg_txt, neg_img): the rows that have a negative at all (R,), and for each the
        index of its negative caption and of its negative image, each (R,).
    """
    b = image_ids.shape[0]
    other = image_ids[:, None] != image_ids[None, :]                      # (B, B) allowed negatives
    if sim is None:
        w_i2t = w_t2i = torch.ones(b, b, device=image_ids.device)
    else:
        w_i2t, w_t2i = sim.softmax(1), sim.T.softmax(1)
    # (+1e-6: every allowed pair stays possible when the softmax underflows)
    w_i2t = (w_i2t + 1e-6) * other
    w_t2i = (w_t2i + 1e-6) * other
    rows = other.any(1).nonzero().squeeze(1)
    if len(rows) == 0:
        empty = rows.new_zeros(0)
        return rows, empty, empty
    return rows, torch.multinomial(w_i2t[rows], 1).squeeze(1), torch.multinomial(w_t2i[rows], 1).squeeze(1)




# -------------------------------------------------------------------------------------- MLM
@OBJECTIVES.register("mlm")
class MLM(Objective):
    """Masked language modelling conditioned on the image (BERT masking, fused text tokens).

    Args:
        mask_prob: fraction of real, non-special tokens to predict (15%).
        processor: injected by the trainer; its tokenizer gives [MASK], the special ids and the
            vocabulary to draw random replacements from.
    """

    requires = ("pixel_values", "input_ids", "attention_mask")

    def __init__(self, processor, mask_prob: float = 0.15):
        tok = processor.tokenizer
        if tok.mask_token_id is None:
            raise ValueError("mlm needs a tokenizer with a [MASK] token")
        self.mask_id, self.vocab = tok.mask_token_id, len(tok)
        self.special = torch.tensor(sorted(set(tok.all_special_ids)))
        self.mask_prob = mask_prob

    def mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked ids, labels with -100 where nothing is predicted); BERT's 80/10/10 rule."""
        ids = input_ids.clone()
        can = attention_mask.bool() & ~torch.isin(ids, self.special.to(ids.device))   # (B, T)
        pick = (torch.rand(ids.shape, device=ids.device) < self.mask_prob) & can
        if not pick.any() and can.any():                                   # always predict something
            pick.view(-1)[can.view(-1).nonzero()[0]] = True
        labels = input_ids.masked_fill(~pick, -100)
        r = torch.rand(ids.shape, device=ids.device)
        ids[pick & (r < 0.8)] = self.mask_id                               # 80% [MASK]
        rand = pick & (r >= 0.8) & (r < 0.9)                               # 10% random token, 10% kept
        ids[rand] = torch.randint(self.vocab, (int(rand.sum()),), device=ids.device)
        return ids, labels

    def check(self, model):
        head = getattr(model, "mlm_head", None)
        _need(head is not None, "objective mlm needs a fusion_encoder built with mlm_vocab_size > 0")
        _need(head.decoder.out_features >= self.vocab, f"objective mlm: the model's MLM head predicts "
              f"{head.decoder.out_features} tokens but the tokenizer has {self.vocab}; set mlm_vocab_size: {self.vocab}")

    def __call__(self, model, batch):
        ids, labels = self.mask(batch["input_ids"], batch["attention_mask"])
        out = getattr(batch, "output", None)  # ITC / ITM ran the towers on this batch already
        image = out.image_features if out is not None else None
        # The image side is shared with ITC/ITM when they ran; only the masked text is new.
        mlm = model(pixel_values=None if image is not None else batch["pixel_values"], image_features=image,
                    input_ids=ids, attention_mask=batch["attention_mask"], return_mlm=True)
        logits = mlm.mlm_logits.float()                                    # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        keep = labels != -100
        return loss, {"loss": loss.detach(), "acc": _accuracy(logits[keep], labels[keep])}


# --------------------------------------------------------------------------------------- LM
@OBJECTIVES.register("lm")
class LM(Objective):
    """Next-token cross-entropy of the decoder (captioning, generative VQA, translation).

    Targets are `decoder_input_ids` shifted by one ([CLS] w1 ... wn [SEP] -> w1 ... wn [SEP]);
    padding (decoder_attention_mask == 0) is ignored. Encoder-side text (`input_ids`: the
    question or source sentence) goes into the memory when the batch has it.

    Args:
        label_smoothing: label smoothing of the cross-entropy.
    """

    requires = ("pixel_values", "decoder_input_ids", "decoder_attention_mask")

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def check(self, model):
        _need(getattr(model, "decoder", None) is not None, "objective lm needs an encoder_decoder model")

    def __call__(self, model, batch):
        dec, dmask = batch["decoder_input_ids"], batch["decoder_attention_mask"]
        out = _forward(model, batch)           # shared with object_attributes on the same batch
        logits = out.logits[:, :-1].float()                                # (B, T-1, V)
        target = dec[:, 1:].masked_fill(dmask[:, 1:] == 0, -100)           # (B, T-1)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100,
                               label_smoothing=self.label_smoothing)
        keep = target != -100
        return loss, {"loss": loss.detach(), "token_acc": _accuracy(logits[keep], target[keep])}


# ----------------------------------------------------------------- classification / VQA answers
@OBJECTIVES.register("classification")
class Classification(Objective):
    """Cross-entropy of the fusion classifier over `labels` (multimodal classification).

    Args:
        label_smoothing: label smoothing of the cross-entropy.
    """

    requires = ("pixel_values", "input_ids", "attention_mask", "labels")

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def check(self, model):
        _need(getattr(model, "classifier", None) is not None,
              "objective classification needs a fusion_encoder with labels (its class names)")

    def __call__(self, model, batch):
        out = _forward(model, batch)
        logits = out.logits.float()
        loss = F.cross_entropy(logits, batch["labels"], label_smoothing=self.label_smoothing)
        return loss, {"loss": loss.detach(), "acc": _accuracy(logits, batch["labels"])}


@OBJECTIVES.register("vqa_classification")
class VQAClassification(Objective):
    """VQA as classification over the answer vocabulary.

    With `answer_scores` (B, C) in the batch (VQAv2 soft scores min(1, #annotators/3)) the loss
    is binary cross-entropy summed over answers (Anderson et al., 2018) and the logged `score`
    is the VQA accuracy of the arg-max answer; otherwise cross-entropy on `labels`.
    """

    requires = ("pixel_values", "input_ids", "attention_mask", "labels")

    def check(self, model):
        _need(getattr(model, "classifier", None) is not None,
              "objective vqa_classification needs a fusion_encoder with an answer vocabulary (labels)")

    def __call__(self, model, batch):
        out = _forward(model, batch)
        logits = out.logits.float()                                        # (B, C)
        logs = {"acc": _accuracy(logits, batch["labels"])}
        if batch.get("answer_scores") is not None:
            scores = batch["answer_scores"].float()
            loss = F.binary_cross_entropy_with_logits(logits, scores, reduction="sum") / logits.shape[0]
            logs["score"] = scores.gather(1, logits.argmax(-1, keepdim=True)).mean().detach()
        else:
            loss = F.cross_entropy(logits, batch["labels"])
        return loss, {"loss": loss.detach(), **logs}


# ------------------------------------------------------------------ object-level supervision
def _nearest_tokens(points: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Index of the image token whose centre is nearest each point. points (..., 2), positions
    (N, 2) or (B, N, 2) with the points' leading dim B -> (...) long."""
    pos = positions if positions.dim() == 2 else positions.view(positions.shape[0], *[1] * (points.dim() - 2),
                                                                  *positions.shape[1:])
    return (points.unsqueeze(-2) - pos).pow(2).sum(-1).argmin(-1)


def _token_positions(model, out, where: str) -> torch.Tensor:
    pos = out.image_features.positions if out.image_features is not None else None
    _need(pos is not None, f"objective {where} needs image tokens with positions (a conv grid vision tower, "
                           f"e.g. conv_stem or efficientnet_lite0); this model's vision tower gives none")
    return pos


@OBJECTIVES.register("hop_attention")
class HopAttention(Objective):
    """Supervise where a fusion's hops look: hop k of a question should land on the image
    objects that the question's k-th object phrase names (`question_objects` in the records,
    GQA-style grounding annotations; the shapes world writes them).

    Per hop with at least one object: -log of the softmax mass on the tokens nearest those
    objects' centres (pick one of them). Per present hop, objects or none: binary cross-entropy
    of each token's sigmoid gate against "an object named here" (which the fusion sums into a
    count, so "how many" and "is there" read the same gates).
    Logged: loss, hit (share of supervised hops whose arg-max token is a named object's).
    """

    requires = ("pixel_values", "input_ids", "attention_mask", "hop_points", "hop_points_mask", "hop_present")

    def check(self, model):
        fusion = getattr(model, "fusion", None)
        _need(fusion is not None and hasattr(fusion, "hops"),
              "objective hop_attention needs a fusion_encoder whose fusion looks at the image in hops "
              "(fusion type hop_attention)")

    def __call__(self, model, batch):
        out = _forward(model, batch)
        logits = out.fused.attention.float()                                   # (B, K, N)
        b, k_model, n = logits.shape
        points, pmask, present = batch["hop_points"], batch["hop_points_mask"], batch["hop_present"]
        k = min(k_model, points.shape[1])
        logits, points, pmask, present = logits[:, :k], points[:, :k], pmask[:, :k], present[:, :k]
        idx = _nearest_tokens(points, _token_positions(model, out, "hop_attention").to(points))  # (B, K, M)
        # (B, K, N), 1 where a named object sits; padded points add 0 (amax keeps real ones)
        target = torch.zeros_like(logits).scatter_reduce_(-1, idx, pmask.to(logits.dtype), reduce="amax")
        has = present & pmask.any(-1)                                          # (B, K)
        zero = logits.sum() * 0
        pick = -torch.logsumexp(logits.log_softmax(-1).masked_fill(target == 0, -1e4), -1)[has].mean() \
            if has.any() else zero
        gate = F.binary_cross_entropy_with_logits(logits[present], target[present]) if present.any() else zero
        loss = pick + gate
        hit = target.gather(-1, logits.argmax(-1, keepdim=True)).squeeze(-1)[has].mean() if has.any() else zero
        return loss, {"loss": loss.detach(), "hit": hit.detach()}


@OBJECTIVES.register("object_attributes")
class ObjectAttributes(Objective):
    """Object-level supervision of the vision tower: every image token predicts the attributes
    of the object centred at it (class 0: none), from the records' `objects` — dense targets
    in the manner of CenterNet (Zhou et al., 2019), with attributes in place of categories.
    A token is an object's when its centre is the one nearest the object's box centre.
    Logged: loss, acc (attribute accuracy on the tokens that hold an object).

    `recolor` (a fraction, default 0): that share of the step's images is seen a second time
    with its hues rotated (a random angle per image about the grey axis, as colour jitter in
    SimCLR), and the heads of `recolor_attributes` — those a hue rotation leaves unchanged; by
    default every attribute but one named color/colour — learn on that view too. A shape then
    has to be read the same in every colour, which is what colour-shape pairs never seen in
    training need (the compositional split). Logged: recolor_acc.
    """

    requires = ("pixel_values", "objects")

    def __init__(self, processor=None, recolor: float = 0.0, recolor_attributes: list[str] | None = None):
        if isinstance(recolor, bool) or not isinstance(recolor, (int, float)) or not 0.0 <= recolor <= 1.0:
            raise ConfigError(f"object_attributes.recolor: expected a fraction of the images in [0, 1], got {recolor!r}")
        if recolor_attributes is not None and (not isinstance(recolor_attributes, (list, tuple))
                                               or not all(isinstance(a, str) for a in recolor_attributes)):
            raise ConfigError(f"object_attributes.recolor_attributes: expected a list of attribute names, "
                              f"got {recolor_attributes!r}")
        self.recolor = float(recolor)
        self.recolor_attributes = list(recolor_attributes) if recolor_attributes is not None else None
        image = getattr(processor, "image", None)
        self.mean = torch.tensor(getattr(image, "mean", [0.5] * 3), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(image, "std", [0.5] * 3), dtype=torch.float32).view(1, 3, 1, 1)

    def check(self, model):
        _need(bool(getattr(model, "object_attributes", None)),
              "objective object_attributes needs a model built with object_attributes "
              "({attribute: [values]}, e.g. {color: [red, blue], shape: [circle, square]})")
        if self.recolor:
            names = list(model.object_attributes)
            chosen = self._recolored(names)
            _need(all(a in names for a in chosen),
                  f"object_attributes.recolor_attributes: {[a for a in chosen if a not in names]} are not "
                  f"attributes of this model (it has {names})")
            _need(bool(chosen), "object_attributes.recolor: no attribute left to learn on the recoloured "
                                "view (set recolor_attributes, e.g. [shape, size])")

    def _recolored(self, names: list[str]) -> list[str]:
        if self.recolor_attributes is not None:
            return self.recolor_attributes
        return colour_free(names)

    def __call__(self, model, batch):
        out = _forward(model, batch)
        pos = _token_positions(model, out, "object_attributes")
        vocab = {a: {v: i + 1 for i, v in enumerate(vals)} for a, vals in model.object_attributes.items()}
        rows = pixel_rows = list(range(len(batch["objects"])))
        if batch.get("image_index") is not None:  # questions of one image: score the image once
            first: dict[int, int] = {}                # image row -> its first question
            for i, r in enumerate(batch["image_index"].tolist()):
                first.setdefault(r, i)
            rows, pixel_rows = list(first.values()), list(first)
        objects = [batch["objects"][i] for i in rows]
        logits_of = {a: lg[rows] for a, lg in out.object_logits.items()}                   # (R, N, C)
        b, n = len(rows), out.image_features.tokens.shape[1]
        if pos.dim() == 3:
            pos = pos[rows]
        targets = {a: torch.zeros(b, n, dtype=torch.long) for a in vocab}
        for i, objs in enumerate(objects):
            if not objs:
                continue
            idx = _nearest_tokens(torch.tensor([o["point"] for o in objs], dtype=pos.dtype, device=pos.device),
                                  pos if pos.dim() == 2 else pos[i]).tolist()
            for o, t in zip(objs, idx):
                for a, classes in vocab.items():
                    # a value the model has no class for is ignored, not "no object"
                    targets[a][i, t] = classes.get(str(o.get(a)), -100) if o.get(a) is not None else -100
        loss, acc = _attribute_loss(logits_of, targets, list(logits_of))
        logs = {"loss": loss.detach(), "acc": acc}
        if self.recolor and model.training:
            extra, logs["recolor_acc"] = self._recolor_loss(model, batch["pixel_values"][pixel_rows], targets)
            loss = loss + extra
        return loss, logs

    def _recolor_loss(self, model, pixels: torch.Tensor, targets: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads of the hue-invariant attributes, on a hue-rotated view of some of the images
        (`pixels` (R, 3, H, W) and `targets` {attribute: (R, N)} row for row)."""
        pick = torch.randperm(len(pixels))[:max(1, round(self.recolor * len(pixels)))]
        with feature_cache_off(model):      # a view of this step only: nothing to keep
            image = model.encode_image_features(hue_rotate(pixels[pick], self.mean, self.std))
        return _attribute_loss(model.object_logits(image), {a: t[pick] for a, t in targets.items()},
                               self._recolored(list(targets)))


def _attribute_loss(logits_of: dict, targets: dict, attributes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of the heads of `attributes` against their token targets (-100:
    ignored), and their accuracy on the tokens that hold an object (a detached scalar)."""
    losses, correct, total = [], 0.0, 0.0
    for a in attributes:
        logits = logits_of[a]
        t = targets[a].to(logits.device)
        losses.append(F.cross_entropy(logits.float().flatten(0, 1), t.flatten(), ignore_index=-100))
        on = t > 0
        correct += float((logits.argmax(-1)[on] == t[on]).sum())
        total += float(on.sum())
    return torch.stack(losses).sum(), torch.as_tensor(correct / total if total else 0.0)


def hue_rotate(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               angles: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised images (B, 3, H, W) with their hues rotated by `angles` (B,) radians (random
    when None) about the grey axis: greys stay grey, a colour keeps its brightness and saturation
    and changes hue (Rodrigues' rotation in RGB, clamped to [0, 1])."""
    b = pixels.shape[0]
    if angles is None:
        angles = torch.rand(b) * (2 * torch.pi)
    mean, std = mean.to(pixels), std.to(pixels)
    rgb = pixels * std + mean
    u = torch.full((3,), 3 ** -0.5, dtype=pixels.dtype, device=pixels.device)
    cross = torch.tensor([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]], dtype=pixels.dtype,
                         device=pixels.device)
    cos, sin = angles.to(pixels).cos().view(b, 1, 1), angles.to(pixels).sin().view(b, 1, 1)
    rot = cos * torch.eye(3, dtype=pixels.dtype, device=pixels.device) + sin * cross + (1 - cos) * torch.outer(u, u)
    rgb = torch.einsum("bij,bjhw->bihw", rot, rgb).clamp(0.0, 1.0)
    return (rgb - mean) / std


# ------------------------------------------------------------- boxes: set matching (DETR)
def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-to-one assignment of predictions to targets of least total cost.

    Args:
        cost: (N, T) cost of giving target t to prediction n (N >= T in detection: every target
            gets a prediction, the other predictions get none).
    Returns:
        (prediction indices (K,), target indices (K,)), K = min(N, T), in target order.
    """
    from scipy.optimize import linear_sum_assignment

    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    rows, cols = linear_sum_assignment(cost.detach().float().cpu().numpy())
    order = cols.argsort()
    return torch.as_tensor(rows[order], dtype=torch.long), torch.as_tensor(cols[order], dtype=torch.long)


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al., 2017), summed: easy negatives (most tokens) weigh little."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    weight = (alpha * target + (1 - alpha) * (1 - target)) * (1 - p_t) ** gamma
    return (weight * ce).sum()


@OBJECTIVES.register("set_matching")
class SetMatching(Objective):
    """DETR's set loss (Carion et al., 2020) on a text-queried detector's per-token boxes.

    For each (image, text) pair, Hungarian matching assigns every target box of the text to one
    image token, at the least cost `match * -p(match) + l1 * |box - target|_1 + giou * -GIoU`
    (`batch["target_boxes"]`: per pair (T, 4) xyxy fractions of the image; T = 0 when nothing
    matches). Matched tokens learn "match" (sigmoid focal loss) and their box (L1 + 1 - GIoU);
    every other token learns "no match". Each term is divided by the number of target boxes in
    the batch, as in DETR. A referring expression is the one-box case.

    Args:
        match, l1, giou: weights of the three terms, in the cost and in the loss (Deformable
            DETR's 2 / 5 / 2).
    Logged: loss, match, l1, giou, top1 (share of pairs with a target whose best-scoring token's
    box overlaps a target at IoU >= 0.5: grounding accuracy), empty_fp (tokens scoring above 0.5
    per pair where nothing matches).
    """

    requires = ("pixel_values", "input_ids", "attention_mask", "target_boxes")

    def __init__(self, match: float = 2.0, l1: float = 5.0, giou: float = 2.0):
        self.w_match, self.w_l1, self.w_giou = match, l1, giou

    def check(self, model):
        _need(hasattr(model, "box") and hasattr(model, "match"),
              "objective set_matching needs a model that predicts boxes per image token (a text_detector)")

    def __call__(self, model, batch):
        from polymodal.models.boxes import batched_giou, elementwise_giou, elementwise_iou

        out = _forward(model, batch)
        logits, boxes = out.logits.float(), out.boxes.float()             # (B, N), (B, N, 4)
        targets = [t.to(boxes.device, torch.float32) for t in batch["target_boxes"]]
        counts = [len(t) for t in targets]
        b, n, t_max = logits.shape[0], logits.shape[1], max(counts + [1])
        padded = boxes.new_zeros(b, t_max, 4)                              # (B, T, 4) targets, zero-padded
        for i, t in enumerate(targets):
            padded[i, :len(t)] = t
        with torch.no_grad():                                              # every pair's cost in one go
            cost = (-self.w_match * logits.sigmoid()[:, :, None] + self.w_l1 * torch.cdist(boxes, padded, p=1)
                    - self.w_giou * batched_giou(boxes, padded)).cpu()     # (B, N, T)
        rows, cols, which = [], [], []
        for i, k in enumerate(counts):
            if k:
                r, c = hungarian_match(cost[i, :, :k])
                rows.append(r), cols.append(c), which.append(torch.full_like(r, i))
        goal = torch.zeros_like(logits)                                    # (B, N) 1 on matched tokens
        n_boxes = max(1, sum(counts))
        if rows:
            rows, cols, which = (torch.cat(x).to(boxes.device) for x in (rows, cols, which))
            goal[which, rows] = 1.0
            matched, wanted = boxes[which, rows], padded[which, cols]      # (K, 4) each
            l1 = (matched - wanted).abs().sum() / n_boxes
            giou = (1 - elementwise_giou(matched, wanted)).sum() / n_boxes
        else:
            l1 = giou = logits.sum() * 0
        match = sigmoid_focal_loss(logits, goal) / n_boxes
        loss = self.w_match * match + self.w_l1 * l1 + self.w_giou * giou
        with torch.no_grad():
            has = torch.tensor(counts, device=logits.device) > 0           # (B,)
            best = boxes[torch.arange(b, device=boxes.device), logits.argmax(-1)]                 # (B, 4)
            iou_best = elementwise_iou(best[:, None], padded)              # (B, T)
            valid = torch.arange(t_max, device=logits.device)[None] < torch.tensor(counts, device=logits.device)[:, None]
            hit = ((iou_best >= 0.5) & valid).any(-1)
            top1 = hit[has].float().mean() if has.any() else logits.new_zeros(())
            empty_fp = (logits[~has] > 0).float().sum(-1).mean() if (~has).any() else logits.new_zeros(())
        # (top1 and empty_fp are logged in every batch, 0 when it has no such pair: validation averages per key)
        return loss, {"loss": loss.detach(), "match": match.detach(), "l1": l1.detach(), "giou": giou.detach(),
                      "top1": top1, "empty_fp": empty_fp}
