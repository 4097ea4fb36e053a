"""Attention-based token scores: a fusion's attention over the image tokens, and a decoder's
cross-attention per generated token.

Fusions (records from `polymodal.models.fusion.recording_attention`, with the gradient of the
target with respect to each record's probabilities):

* `cross_transformer` (one stream over [image; text]): `attention` and `grad_attention` read the
  last layer, whose queries are the text tokens; `relevance` runs Chefer et al.'s rule for
  self-attention through every layer, R <- R + mean_h((grad * A)^+) R from R = I, and reads the
  pooled position's row (the first text token, or the mean of the text rows).
* `attention` (text over image, optionally co-attention): Chefer et al.'s bi-modal rules,
  R^{ti} <- R^{ti} + A^{ti} R^{ii}, R^{tt} <- R^{tt} + A^{ti} R^{it} and, with co-attention, the
  same for the image stream; the pooled output is the mean of the text rows.
* `hop_attention` (each hop: one query over the image tokens): gradient x attention is the mean
  over hops of A_k (grad_k)^+. With no self-attention among image tokens inside the fusion,
  Chefer's cross-attention rule gives each hop's relevance as its own Abar_k = (A_k grad_k)^+
  plus what its query inherited from the previous hop (a hop's query is conditioned on what the
  previous hop found), r_k = Abar_k + r_{k-1}; the readout reads every hop, so the map is
  sum_k r_k.
"""
from __future__ import annotations

import torch

from polymodal.errors import ConfigError
from polymodal.models.fusion import AttentionFusion, CrossTransformerFusion, HopAttentionFusion

#: the fusion modules whose attention explanations read (others: gradient methods only)
ATTENDING = (CrossTransformerFusion, AttentionFusion, HopAttentionFusion)


def _masked_rows_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real rows: x (B, T, N), mask (B, T) -> (B, N)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def fusion_scores(fusion, records: list, grads: list, n_image: int, text_mask: torch.Tensor,
                  method: str) -> torch.Tensor:
    """Image-token scores (B, N) of one attention-based method for a fusion.

    Args:
        fusion: the fusion module. records: [(layer, probs (B, H, Q, K))] in the order run.
        grads: the target's gradient for each record's probs (same shapes; None: unused).
        n_image: number of image tokens N. text_mask: (B, T) bool.
        method: "attention", "grad_attention" or "relevance".
    """
    if not isinstance(fusion, ATTENDING) or not records:
        raise ConfigError(f"method {method!r} reads a fusion's attention; this model's fusion "
                          f"({type(fusion).__name__}) has none: use grad_x_activation or gradcam")
    probs = [p.detach().float() for _, p in records]
    grads = [torch.zeros_like(p) if g is None else g.detach().float() for p, g in zip(probs, grads)]
    N = n_image
    if isinstance(fusion, HopAttentionFusion):
        a = torch.stack([p[:, 0, 0] for p in probs], 1)           # (B, K, N)
        g = torch.stack([x[:, 0, 0] for x in grads], 1)           # (B, K, N)
        if method == "attention":
            return a.mean(1)
        if method == "grad_attention":
            return (a * g.clamp_min(0)).mean(1)
        r, total = torch.zeros_like(a[:, 0]), torch.zeros_like(a[:, 0])
        for k in range(a.shape[1]):
            r = (a[:, k] * g[:, k]).clamp_min(0) + r
            total = total + r
        return total
    if isinstance(fusion, CrossTransformerFusion):
        last_p, last_g = probs[-1], grads[-1]                     # (B, H, T, N+T): text queries
        if method == "attention":
            return _masked_rows_mean(last_p.mean(1)[..., :N], text_mask)
        if method == "grad_attention":
            return _masked_rows_mean((last_p * last_g.clamp_min(0)).mean(1)[..., :N], text_mask)
        B, L = last_p.shape[0], last_p.shape[-1]
        R = torch.eye(L).expand(B, L, L).clone()                  # (B, N+T, N+T)
        for p, g in zip(probs, grads):
            a = (p * g).clamp_min(0).mean(1)                      # (B, Q, N+T)
            if a.shape[1] < L:                                    # the last layer: text queries only
                a = torch.cat([a.new_zeros(B, L - a.shape[1], L), a], 1)
            R = R + a @ R
        text_rows = R[:, N:, :N]                                  # (B, T, N)
        if fusion.pool == "cls":
            return text_rows[:, 0]
        return _masked_rows_mean(text_rows, text_mask)
    # AttentionFusion: text layers (text over image) and, with co-attention, image layers
    text_layers = {id(b.attn) for b in fusion.text_layers}
    ti = [(p, g) for (layer, _), p, g in zip(records, probs, grads) if id(layer) in text_layers]
    it = [(p, g) for (layer, _), p, g in zip(records, probs, grads) if id(layer) not in text_layers]
    if method == "attention":
        return _masked_rows_mean(torch.stack([p.mean(1) for p, _ in ti]).mean(0), text_mask)
    if method == "grad_attention":
        p, g = ti[-1]
        return _masked_rows_mean((p * g.clamp_min(0)).mean(1), text_mask)
    B, T = text_mask.shape
    r_tt, r_ii = torch.eye(T).expand(B, T, T).clone(), torch.eye(N).expand(B, N, N).clone()
    r_ti, r_it = torch.zeros(B, T, N), torch.zeros(B, N, T)
    for k, (p, g) in enumerate(ti):
        a_ti = (p * g).clamp_min(0).mean(1)                       # (B, T, N)
        new_tt, new_ti = r_tt + a_ti @ r_it, r_ti + a_ti @ r_ii
        if k < len(it):                                           # co-attention: the image stream too
            a_it = (it[k][0] * it[k][1]).clamp_min(0).mean(1)     # (B, N, T)
            r_ii, r_it = r_ii + a_it @ r_ti, r_it + a_it @ r_tt
        r_tt, r_ti = new_tt, new_ti
    out = _masked_rows_mean(r_ti, text_mask)
    if it:  # the pooled vector also reads the image stream: its rows' relevance beyond themselves
        out = out + (r_ii - torch.eye(N)).mean(1)
    return out


def decoder_scores(cross: list[torch.Tensor], logits: torch.Tensor, ids: torch.Tensor, first: int, stop: set[int],
                   cols: slice, method: str) -> tuple[list[tuple[int, torch.Tensor]], torch.Tensor, float]:
    """Per generated token and for the whole output, scores over the image columns of a decoder's
    cross-attention, for one sequence.

    Args:
        cross: per decoder layer, cross-attention probabilities (1, H, T, M) in the graph.
        logits: (1, T, V) next-token logits for the decoder inputs `ids` (1, T).
        first: position of the first generated token in `ids` (after BOS / a prompt).
        stop: token ids that end the output (EOS, padding); they are not explained.
        cols: the image tokens among the M memory columns.
        method: "attention" (mean over layers and heads of the token's row) or "grad_attention"
            (per layer, mean over heads of A * (d log p(token) / dA)^+, summed over rows, then
            mean over layers).

    Returns:
        ([(token id, scores (N,))], whole-output scores (N,), sum of the tokens' log-probs).
    """
    logp = logits[0].float().log_softmax(-1)                      # (T, V)
    steps = []
    for t in range(first, ids.shape[1]):
        tok = int(ids[0, t])
        if tok in stop:
            break
        steps.append((t, tok, logp[t - 1, tok]))
    if not steps:
        return [], torch.zeros(cols.stop - cols.start), 0.0
    per_token = []
    if method == "attention":
        att = torch.stack([a.detach().float()[0, :, :, cols] for a in cross]).mean((0, 1))  # (T, N)
        for t, tok, _ in steps:
            per_token.append((tok, att[t - 1]))
        whole = torch.stack([s for _, s in per_token]).mean(0)
    else:
        def cam(target):
            grads = torch.autograd.grad(target, cross, retain_graph=True)
            return torch.stack([(a.detach().float() * g.float().clamp_min(0))[0, :, :, cols].mean(0).sum(0)
                                for a, g in zip(cross, grads)]).mean(0)  # (N,)
        for _, tok, lp in steps:
            per_token.append((tok, cam(lp)))
        whole = cam(torch.stack([lp for *_, lp in steps]).sum())
    return per_token, whole, float(sum(float(lp.detach()) for *_, lp in steps))
