"""Explanations of polymodal's own models, per family.

* fusion encoder: the target is the predicted class's logit (VQA answer, class), else the ITM
  "match" logit, else (`target="itc"`) the ITC similarity of the towers' embeddings;
* dual encoder: the cosine similarity of the image and the text;
* encoder-decoder: each generated token's log-probability, and their sum for the whole output.

Gradient methods (`grad_x_activation`, `gradcam`) read the vision tower's output tokens (for a
Hugging Face ViT / CLIP tower: the input of its last layer, which every patch still reaches the
pooled output from); attention methods read the fusion's or the decoder's attention.
"""
from __future__ import annotations

from typing import Sequence

import torch

from polymodal.errors import ConfigError
from polymodal.explain.attention import ATTENDING, decoder_scores, fusion_scores
from polymodal.explain.core import (Capture, Explanation, TokenMap, check_method, gradient_maps, image_size,
                                    last_layer_input, to_image_map, token_grid)
from polymodal.models.families import DualEncoder, EncoderDecoder, FusionEncoder
from polymodal.models.fusion import recording_attention

GRADIENT_METHODS = ("grad_x_activation", "gradcam")
ATTENTION_METHODS = ("grad_attention", "relevance", "attention")


def default_method(model) -> str:
    """What `explain` uses when no method is named: attention-based where the model attends."""
    if isinstance(model, EncoderDecoder) or (isinstance(model, FusionEncoder) and isinstance(model.fusion, ATTENDING)):
        return "grad_attention"
    return "grad_x_activation"


def offered(model, target: str | None = None) -> tuple[str, ...]:
    if isinstance(model, EncoderDecoder):
        return ("grad_attention", "attention") + GRADIENT_METHODS
    if isinstance(model, FusionEncoder) and isinstance(model.fusion, ATTENDING) and target != "itc":
        return ATTENTION_METHODS + GRADIENT_METHODS
    return GRADIENT_METHODS


class _TowerTokens:
    """Captures what the gradient methods read while the model runs: the vision tower's tokens
    (a Hugging Face tower: its last layer's input), or for Grad-CAM on a conv stem its last
    feature map, the output of its last conv block (after the activation, as Grad-CAM assumes;
    the tokens after it are LayerNormed, with position embeddings added)."""

    def __init__(self, vision, method: str | None = None):
        blocks = getattr(vision, "blocks", None)
        layer = last_layer_input(vision)
        if method == "gradcam" and isinstance(blocks, torch.nn.ModuleList) and len(blocks):
            self.capture = Capture(blocks[-1])
        elif layer is not None:
            self.capture = Capture(layer, pre=True)
        else:
            self.capture = Capture(vision)

    def __enter__(self):
        self.capture.__enter__()
        return self

    def __exit__(self, *exc):
        self.capture.__exit__(*exc)

    @property
    def tensor(self) -> torch.Tensor:
        """What was captured: (B, N, D) tokens or a (B, C, h, w) feature map."""
        return self.capture.tensor

    @staticmethod
    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(2).transpose(1, 2) if t.dim() == 4 else t   # (B, N, D)

    def scores(self, target: torch.Tensor, method: str) -> torch.Tensor:
        """Token scores (B, N) of a gradient method for `target` (summed over the batch)."""
        (g,) = torch.autograd.grad(target, [self.tensor])
        return gradient_maps(self.flat(self.tensor), self.flat(g), method)

    def grid(self):
        t = self.tensor
        if t.dim() == 4:
            return t.shape[-2], t.shape[-1], 0
        return token_grid(t.shape[1], getattr(self.capture.value, "positions", None))


def explain_native(loaded, images: Sequence, texts: Sequence[str] | None, method: str | None,
                   target: str | None = None, max_new_tokens: int = 20) -> list[Explanation]:
    """Explanations of a NativeModel's outputs for `images` (PIL) and their `texts`."""
    model = loaded.model
    method = method or default_method(model if target != "itc" else None)
    if isinstance(model, EncoderDecoder):
        return [_decoder(loaded, im, None if texts is None else texts[i], method, max_new_tokens)
                for i, im in enumerate(images)]
    if texts is None:
        raise ConfigError("this model explains an image with a text: give a question or text for each image")
    if isinstance(model, FusionEncoder):
        return _fusion(loaded, images, texts, method, target)
    if isinstance(model, DualEncoder):
        return _similarity(loaded, images, texts, method)
    raise ConfigError(f"polymodal cannot explain a {type(model).__name__}")


def _pixels(loaded, images) -> torch.Tensor:
    return loaded.processor.process_images(images).to(loaded.device).requires_grad_(True)


def _fusion(loaded, images, texts, method: str, target: str | None) -> list[Explanation]:
    m = loaded.model
    target = target or ("answer" if m.classifier is not None else "itm" if m.itm_head is not None else "itc")
    if target not in ("answer", "itm", "itc"):
        raise ConfigError(f"target {target!r}: one of answer, itm, itc")
    need = {"answer": m.classifier, "itm": m.itm_head, "itc": m.image_proj}[target]
    if need is None:
        raise ConfigError(f"target {target!r}: this model has no {'classifier' if target == 'answer' else target} head")
    check_method(method, offered(m, target), f"this fusion encoder's {target} output")
    tok = {k: v.to(loaded.device) for k, v in loaded.processor.tokenize(texts).items()}
    with torch.enable_grad(), _TowerTokens(m.vision, method) as tower, recording_attention(m.fusion) as records:
        out = m(_pixels(loaded, images), **tok)
        if target == "answer":
            pred = out.logits.argmax(-1)
            y = out.logits.gather(1, pred[:, None])[:, 0]                       # (B,)
            answers = [m.labels[int(i)] for i in pred]
        elif target == "itm":
            y = out.itm_logits[:, 1]
            answers = ["match" if float(p) > 0.5 else "no match" for p in out.itm_logits.detach().softmax(-1)[:, 1]]
        else:
            y = (out.image_embeds * out.text_embeds).sum(-1)
            answers = [None] * len(images)
        n_image = out.image_features.tokens.shape[1]
        if method in GRADIENT_METHODS:
            scores, grid = tower.scores(y.sum(), method), tower.grid()
        else:
            used = [p for _, p in records]
            grads = torch.autograd.grad(y.sum(), used, allow_unused=True) if method != "attention" else [None] * len(used)
            scores = fusion_scores(m.fusion, records, list(grads), n_image, tok["attention_mask"].bool(), method)
            grid = token_grid(n_image, out.image_features.positions)
    return [_one(scores[i], grid, images[i], method, texts[i], answers[i], float(y[i].detach())) for i in range(len(images))]


def _similarity(loaded, images, texts, method: str) -> list[Explanation]:
    m = loaded.model
    check_method(method, GRADIENT_METHODS, "a dual encoder (its towers meet only in the similarity)")
    tok = {k: v.to(loaded.device) for k, v in loaded.processor.tokenize(texts).items()}
    with torch.enable_grad(), _TowerTokens(m.vision, method) as tower:
        out = m(_pixels(loaded, images), **tok)
        y = (out.image_embeds * out.text_embeds).sum(-1)                         # (B,) cosine
        scores, grid = tower.scores(y.sum(), method), tower.grid()
    return [_one(scores[i], grid, images[i], method, texts[i], None, float(y[i].detach())) for i in range(len(images))]


def _decoder(loaded, image, text: str | None, method: str, max_new_tokens: int) -> Explanation:
    m = loaded.model
    check_method(method, offered(m), "an encoder-decoder")
    if (m.text is not None) != (text is not None):
        raise ConfigError("this model reads a text with the image (a question or a sentence): give one"
                          if m.text is not None else "this captioner reads the image alone: give no text")
    tok = {k: v.to(loaded.device) for k, v in loaded.processor.tokenize([text]).items()} if text is not None else {}
    px = _pixels(loaded, [image])
    with torch.no_grad():
        ids = m.generate(px.detach(), **tok, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
    cfg = m.decoder.model.config
    dec = m.decoder.model
    before = cfg._attn_implementation
    dec.set_attn_implementation("eager")   # attention probabilities are returned by the eager kernel only
    try:
        with torch.enable_grad(), _TowerTokens(m.vision, method) as tower:
            memory, memory_mask = m.encode(px, **tok)
            out = dec(input_ids=ids, encoder_hidden_states=memory, encoder_attention_mask=memory_mask.long(),
                      output_attentions=True, use_cache=False)
            n_text = tok["input_ids"].shape[1] if tok else 0
            n_image = memory.shape[1] - n_text
            stop = {cfg.eos_token_id, cfg.pad_token_id}
            if method in GRADIENT_METHODS:
                per_token, _, score = decoder_scores(list(out.cross_attentions), out.logits, ids, 1, stop,
                                                     slice(0, n_image), "attention")
                lp = out.logits[0].float().log_softmax(-1)
                total = sum(lp[t - 1, int(ids[0, t])] for t in range(1, 1 + len(per_token)))
                per_token = []
                grid = tower.grid()
                whole = (tower.scores(total, method)[0] if torch.is_tensor(total)
                         else torch.zeros(grid[0] * grid[1] + grid[2]))
            else:
                per_token, whole, score = decoder_scores(list(out.cross_attentions), out.logits, ids, 1, stop,
                                                         slice(0, n_image), method)
                grid = token_grid(n_image, None)
    finally:
        dec.set_attn_implementation(before)
    answer = loaded.processor.decode(ids)[0]
    names = loaded.processor.tokenizer.convert_ids_to_tokens([t for t, _ in per_token])
    ex = _one(whole, grid, image, method, text, answer, score)
    size = image_size(image)
    ex.tokens = [TokenMap(name, to_image_map(s, grid, size)[0]) for name, (_, s) in zip(names, per_token)]
    return ex


def _one(scores: torch.Tensor, grid, image, method, text, answer, score) -> Explanation:
    full, small = to_image_map(scores, grid, image_size(image))
    return Explanation(map=full, grid=small, method=method, text=text, answer=answer, score=score)
