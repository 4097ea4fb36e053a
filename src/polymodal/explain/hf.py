"""Explanations of Hugging Face checkpoints that polymodal loads (polymodal.infer.hf).

* `CLIPModel`, `SiglipModel`: gradient x activation (or Grad-CAM) of the image-text cosine
  similarity on the patch tokens entering the vision tower's last layer (the last layer's own
  patch outputs never reach CLIP's CLS pooling, so their gradient is zero);
* `VisionEncoderDecoderModel` (ViT-GPT-2 and kin): the decoder's cross-attention per generated
  token (`attention`), gradient x cross-attention (`grad_attention`), and the gradient methods
  on the encoder's last-layer input for the whole caption. Attention probabilities come from the
  eager attention kernel, switched on for the call only.

The patch grid covers the image the checkpoint's processor made (resized, maybe centre-cropped);
it is stretched over the original image.
"""
from __future__ import annotations

import torch

from polymodal.errors import ConfigError
from polymodal.explain.attention import decoder_scores
from polymodal.explain.core import (Capture, Explanation, TokenMap, check_method, gradient_maps, image_size,
                                    last_layer_input, to_image_map, token_grid)
from polymodal.infer.hf import HFClip, HFVisionEncoderDecoder, _normalised

#: the architectures explained here
EXPLAINED = ("CLIPModel", "SiglipModel", "VisionEncoderDecoderModel")


def offered(loaded) -> tuple[str, ...]:
    if isinstance(loaded, HFVisionEncoderDecoder):
        return ("grad_attention", "attention", "grad_x_activation", "gradcam")
    return ("grad_x_activation", "gradcam")


def backend(loaded):
    if isinstance(loaded, HFClip):
        return _similarity
    if isinstance(loaded, HFVisionEncoderDecoder):
        return _captioner
    return None


def _vision_layer(module):
    layer = last_layer_input(module)
    if layer is None:
        raise ConfigError(f"no transformer encoder layers found in {type(module).__name__}; cannot explain it")
    return layer


def _similarity(loaded, images, texts, method, target=None, max_new_tokens=20) -> list[Explanation]:
    method = check_method(method or "grad_x_activation", offered(loaded), f"a {loaded.kind}")
    if texts is None:
        raise ConfigError("an image-text encoder explains the similarity of an image to a text: give a text per image")
    txt = loaded._text_embeddings(list(texts), None).float()               # (B, E), no gradient needed
    px = loaded._process(images).requires_grad_(True)                      # (B, 3, S, S)
    with torch.enable_grad(), Capture(_vision_layer(loaded.model.vision_model), pre=True) as cap:
        img = _normalised(loaded.model.get_image_features(pixel_values=px))  # (B, E)
        y = (img * txt.to(img.device)).sum(-1)                              # cosine similarity
        (g,) = torch.autograd.grad(y.sum(), [cap.tensor])
        scores = gradient_maps(cap.tensor, g, method)
    grid = token_grid(scores.shape[1])
    out = []
    for i, im in enumerate(images):
        full, small = to_image_map(scores[i], grid, image_size(im))
        out.append(Explanation(map=full, grid=small, method=method, text=texts[i], score=float(y[i].detach())))
    return out


def _captioner(loaded, images, texts, method, target=None, max_new_tokens=20) -> list[Explanation]:
    method = check_method(method or "grad_attention", offered(loaded), f"a {loaded.kind}")
    if texts is not None:
        raise ConfigError("this captioner reads the image alone: give no text")
    model, dec = loaded.model, loaded.model.decoder
    cfg = dec.config
    out = []
    for im in images:
        px = loaded._process([im])
        with torch.no_grad():
            ids = model.generate(px, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)  # (1, T)
        before = cfg._attn_implementation
        dec.set_attn_implementation("eager")
        try:
            with torch.enable_grad(), Capture(_vision_layer(model.encoder), pre=True) as cap:
                px = px.clone().requires_grad_(True)
                res = model(pixel_values=px, decoder_input_ids=ids, output_attentions=True, use_cache=False)
                n_mem = res.cross_attentions[0].shape[-1]
                grid = token_grid(n_mem)
                h, w, first = grid
                stop = {cfg.eos_token_id, cfg.pad_token_id} - {None}
                per_token, whole, score = decoder_scores(list(res.cross_attentions), res.logits, ids, 1, stop,
                                                         slice(0, n_mem), "attention" if method not in
                                                         ("grad_attention",) else method)
                if method in ("grad_x_activation", "gradcam"):
                    lp = res.logits[0].float().log_softmax(-1)
                    total = sum(lp[t - 1, int(ids[0, t])] for t in range(1, 1 + len(per_token)))
                    per_token = []
                    grid = token_grid(cap.tensor.shape[1])
                    if torch.is_tensor(total):
                        (g,) = torch.autograd.grad(total, [cap.tensor])
                        whole = gradient_maps(cap.tensor, g, method)[0]
                    else:
                        whole = torch.zeros(cap.tensor.shape[1])
        finally:
            dec.set_attn_implementation(before)
        size = image_size(im)
        full, small = to_image_map(whole, grid, size)
        names = loaded.tokenizer.convert_ids_to_tokens([t for t, _ in per_token])
        ex = Explanation(map=full, grid=small, method=method, answer=loaded._decode(ids)[0], score=score)
        ex.tokens = [TokenMap(n, to_image_map(s, grid, size)[0]) for n, (_, s) in zip(names, per_token)]
        out.append(ex)
    return out
