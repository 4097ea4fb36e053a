"""Multimodal fusion modules: image features + text features -> text-aligned fused features.

Every fusion has one signature, so a config swaps them without touching anything else:

    Fusion(image_dim, text_dim, dim=256, **own_kwargs)      # image_dim/text_dim: injected
    forward(image: Features, text: Features) -> Features

The output is aligned with the text: `tokens (B, T, dim)` holds one fused vector per text
position (an MLM head can sit on top), `mask` is the text mask and `pooled (B, dim)` summarises
the pair (for ITM, VQA or classification heads). Padded positions (mask False) of either input
never influence a real output: they are zeroed on the way in (so even NaN padding is harmless),
excluded from attention by boolean masks, and zeroed again on the way out.

Registered in `FUSIONS`:
    concat            concatenation of the two modalities' features, then an MLP
    attention         text attends over image (cross-attention); `co_attention=True` adds the
                      image-attends-over-text stream of ViLBERT (Lu et al., 2019)
    cross_transformer single-stream joint self-attention over [image; text] with modality
                      embeddings, as in VisualBERT (Li et al., 2019) / UNITER (Chen et al., 2020)
    projection        projection into a shared space, Z = W_x X + W_y Y + b
    gated             Gated Multimodal Unit (Arevalo et al., 2017)
    bilinear          factorised bilinear pooling, MFB (Yu et al., 2017)
    hop_attention     question-guided hops over position-tagged image tokens (what, where, how
                      many) with a bilinear relational readout; exposes the hops' attention

Attention uses `torch.nn.functional.scaled_dot_product_attention` with boolean key masks:
fast on CPU and bf16-friendly under `torch.autocast`. Inside `recording_attention(module)` the
attention layers (and the hops of `hop_attention`) compute their probabilities explicitly instead
and hand them over, still in the autograd graph, so explanations (polymodal.explain) can take
gradients with respect to them; outside it nothing changes.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.errors import ConfigError
from polymodal.models.base import Component, Features, masked_mean
from polymodal.registry import FUSIONS

log = logging.getLogger(__name__)

__all__ = [
    "Fusion", "ConcatFusion", "AttentionFusion", "CrossTransformerFusion", "ProjectionFusion",
    "GatedFusion", "BilinearFusion", "HopAttentionFusion", "MultiHeadAttention", "FeedForward", "TransformerBlock",
    "recording_attention",
]


@contextlib.contextmanager
def recording_attention(module: nn.Module) -> Iterator[list]:
    """Within the block, every attention of `module` (its `MultiHeadAttention` layers, the hops of
    `HopAttentionFusion`) appends `(layer, probs)` to the list yielded, in the order they run:
    `probs` (B, H, T_queries, N_keys) are the attention probabilities as computed, in the
    autograd graph (a hop is one head and one query over the image tokens). Opt-in because the
    explicit softmax is slower than the fused kernel; the outputs are the same.
    """
    records: list = []
    layers = [m for m in module.modules() if hasattr(m, "attention_record")]
    for m in layers:
        m.attention_record = records
    try:
        yield records
    finally:
        for m in layers:
            m.attention_record = None


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    """Multi-head attention of queries `x` over `context`, with a boolean key-padding mask.

    Self-attention is the case `context is x` (or a superset of x's positions).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.attention_record: list | None = None  # set by `recording_attention`

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """Args:
            x: queries (B, T, D).
            context: keys/values (B, N, D).
            context_mask: (B, N) bool, True where a context token is real.
        """
        B, T, D = x.shape
        N, H = context.shape[1], self.heads
        q = self.q(x).view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, hd)
        k, v = self.kv(context).view(B, N, 2, H, D // H).permute(2, 0, 3, 1, 4)  # 2 x (B, H, N, hd)
        # True = may attend; broadcast over heads and queries. A query whose context is all padding
        # gets a zero output (torch's safe softmax), never NaN.
        attn_mask = context_mask[:, None, None, :]  # (B, 1, 1, N)
        if self.attention_record is not None:
            # the same attention, spelled out so its probabilities can be read and differentiated
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(D // H)  # (B, H, T, N)
            probs = scores.masked_fill(~attn_mask, float("-inf")).softmax(-1).nan_to_num(0.0)
            self.attention_record.append((self, probs))
            y = F.dropout(probs, self.dropout, self.training) @ v  # (B, H, T, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class FeedForward(nn.Sequential):
    """Position-wise MLP: Linear -> GELU -> Dropout -> Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, out_dim: int | None = None):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim or dim))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer layer: x + Attn(LN(x), LN(context)), then x + FFN(LN(x)).

    Pre-LN rather than BERT's post-LN: the fusion layers start from random weights on top of
    pretrained encoders, and pre-LN trains stably without warm-up tricks.

    Args:
        cross: the context is another modality and gets its own LayerNorm; otherwise the
            context is (a superset of) x itself and shares x's LayerNorm (self-attention).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 cross: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        # A separate module rather than an alias of norm1: shared tensors cannot go to safetensors.
        self.norm_context = nn.LayerNorm(dim) if cross else None
        self.attn = MultiHeadAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), context (B, N, D), context_mask (B, N) bool -> (B, T, D)."""
        h = self.norm1(x)
        if self.norm_context is not None:
            c = self.norm_context(context)
        else:
            c = h if context is x else self.norm1(context)
        x = x + self.drop(self.attn(h, c, context_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


_ACTIVATIONS = {"none": nn.Identity, "gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


# ---------------------------------------------------------------------------------------------
# The common base
# ---------------------------------------------------------------------------------------------

class Fusion(Component):
    """Base of the fusion modules: stores the dims, checks and cleans the inputs, masks the output.

    Args:
        image_dim: feature size of the image encoder (injected by the model family).
        text_dim: feature size of the text encoder (injected by the model family).
        dim: feature size of the fused output.
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256):
        super().__init__()
        name = type(self).__name__
        for key, value in (("image_dim", image_dim), ("text_dim", text_dim), ("dim", dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name}: {key} must be a positive integer, got {value!r}")
        self.image_dim, self.text_dim, self.dim = image_dim, text_dim, dim

    def _inputs(self, image: Features, text: Features):
        """Check dims and return (img_tokens, img_mask, txt_tokens, txt_mask) with padding zeroed.

        Padded positions may hold anything (even NaN from a careless collator); zeroing them
        here means no later op (a LayerNorm, a masked sum's 0 * NaN) can leak them into a real
        position.
        """
        for what, feats, want in (("image", image, self.image_dim), ("text", text, self.text_dim)):
            if feats.tokens.shape[-1] != want or feats.pooled.shape[-1] != want:
                raise ValueError(
                    f"{type(self).__name__} was built for {what} features of size {want}, got tokens "
                    f"{tuple(feats.tokens.shape)} and pooled {tuple(feats.pooled.shape)}; build the "
                    f"fusion with {what}_dim equal to the {what} encoder's `dim`")
        img_mask, txt_mask = image.mask.bool(), text.mask.bool()
        img = image.tokens.masked_fill(~img_mask.unsqueeze(-1), 0.0)  # (B, N, Di)
        txt = text.tokens.masked_fill(~txt_mask.unsqueeze(-1), 0.0)   # (B, T, Dt)
        return img, img_mask, txt, txt_mask

    @staticmethod
    def _output(tokens: torch.Tensor, text_mask: torch.Tensor, pooled: torch.Tensor) -> Features:
        """Text-aligned Features; padded text positions are zero, so nothing downstream sees junk."""
        return Features(tokens=tokens.masked_fill(~text_mask.unsqueeze(-1), 0.0),
                        mask=text_mask, pooled=pooled)

    def forward(self, image: Features, text: Features) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError


def _check_heads(name: str, dim: int, heads: int, layers: int) -> None:
    if not isinstance(heads, int) or heads <= 0 or dim % heads:
        raise ConfigError(f"fusion {name!r}: dim ({dim}) must be divisible by heads ({heads}); "
                          f"change one of them (e.g. heads: 4 with dim: 256)")
    if layers < 1:
        raise ConfigError(f"fusion {name!r}: layers must be at least 1, got {layers}")


# ---------------------------------------------------------------------------------------------
# The fusion modules
# ---------------------------------------------------------------------------------------------

@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """Concatenation of the two modalities' features, then an MLP.

    tokens[t] = MLP([text_t; image_pooled]), pooled = MLP([text_pooled; image_pooled]), with one
    MLP for both so tokens and the pooled vector live in the same space. Each modality is
    LayerNormed first: encoders of different families emit features on very different scales.

    Args:
        hidden: width of the MLP's hidden layer (default: 2 * dim).
        dropout: dropout inside the MLP.
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, hidden: int | None = None,
                 dropout: float = 0.0):
        super().__init__(image_dim, text_dim, dim)
        hidden = hidden or 2 * dim
        self.norm_text = nn.LayerNorm(text_dim)
        self.norm_image = nn.LayerNorm(image_dim)
        # Linear([t; i]) == W_t t + W_i i: split in two so the image half is computed once per
        # sample and broadcast over the T text positions instead of concatenated T times.
        self.fc_text = nn.Linear(text_dim, hidden)
        self.fc_image = nn.Linear(image_dim, hidden, bias=False)
        self.mlp = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, image: Features, text: Features) -> Features:
        _, _, txt, txt_mask = self._inputs(image, text)
        img_pooled = self.fc_image(self.norm_image(image.pooled))  # (B, hidden)
        tokens = self.mlp(self.fc_text(self.norm_text(txt)) + img_pooled.unsqueeze(1))  # (B, T, dim)
        pooled = self.mlp(self.fc_text(self.norm_text(text.pooled)) + img_pooled)  # (B, dim)
        return self._output(tokens, txt_mask, pooled)


@FUSIONS.register("attention")
class AttentionFusion(Fusion):
    """Cross-attention: each text token attends over the image tokens.

    Both modalities are projected to `dim`; each layer is a pre-LN transformer layer whose
    attention takes queries from the text and keys/values from the image (residual, LayerNorm,
    FFN). With `co_attention=True` the image stream also attends over the text in every layer,
    both streams reading the other's previous-layer states: the co-attentional transformer
    layer of ViLBERT (Lu et al., 2019, arXiv:1908.02265).

    pooled: the masked mean of the fused text tokens; with co-attention, a linear map of the
    concatenated text and image means (ViLBERT combines its two streams' summaries likewise).

    Args:
        layers: number of (co-)attention layers.
        heads: attention heads; must divide dim.
        mlp_ratio: FFN width as a multiple of dim.
        dropout: dropout on attention weights and residual branches.
        co_attention: also let the image attend over the text (two-stream, ViLBERT).
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, layers: int = 1, heads: int = 4,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, co_attention: bool = False):
        super().__init__(image_dim, text_dim, dim)
        _check_heads("attention", dim, heads, layers)
        self.co_attention = co_attention
        self.proj_text = nn.Linear(text_dim, dim)
        self.proj_image = nn.Linear(image_dim, dim)
        self.text_layers = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, dropout, cross=True) for _ in range(layers))
        self.norm_text = nn.LayerNorm(dim)
        if co_attention:
            self.image_layers = nn.ModuleList(
                TransformerBlock(dim, heads, mlp_ratio, dropout, cross=True) for _ in range(layers))
            self.norm_image = nn.LayerNorm(dim)
            self.pool = nn.Linear(2 * dim, dim)

    def forward(self, image: Features, text: Features) -> Features:
        img, img_mask, txt, txt_mask = self._inputs(image, text)
        t = self.proj_text(txt)   # (B, T, dim)
        i = self.proj_image(img)  # (B, N, dim)
        for k, text_layer in enumerate(self.text_layers):
            if self.co_attention:
                # Both streams update from the other's states of the previous layer.
                t, i = text_layer(t, i, img_mask), self.image_layers[k](i, t, txt_mask)
            else:
                t = text_layer(t, i, img_mask)
        t = self.norm_text(t)
        pooled = masked_mean(t, txt_mask)  # (B, dim)
        if self.co_attention:
            i = self.norm_image(i)
            pooled = self.pool(torch.cat([pooled, masked_mean(i, img_mask)], dim=-1))
        return self._output(t, txt_mask, pooled)


@FUSIONS.register("cross_transformer")
class CrossTransformerFusion(Fusion):
    """Cross-modal transformer: joint self-attention over [image tokens; text tokens].

    The single-stream design of VisualBERT (Li et al., 2019, arXiv:1908.03557) and UNITER
    (Chen et al., 2020, arXiv:1909.11740): both modalities are projected to `dim`, tagged with a
    learned modality (token-type) embedding and run through shared transformer layers in which
    every token attends over all real tokens of both. No new position embeddings: the encoders'
    features carry their positions already. The text part of the output is the fused tokens.

    Args:
        layers: number of joint transformer layers.
        heads: attention heads; must divide dim.
        mlp_ratio: FFN width as a multiple of dim.
        dropout: dropout on attention weights and residual branches.
        pool: "cls" (the first text token, e.g. BERT's [CLS]) or "mean" (masked mean of text).
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, layers: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, pool: str = "cls"):
        super().__init__(image_dim, text_dim, dim)
        _check_heads("cross_transformer", dim, heads, layers)
        if pool not in ("cls", "mean"):
            raise ConfigError(f"fusion 'cross_transformer': pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.proj_text = nn.Linear(text_dim, dim)
        self.proj_image = nn.Linear(image_dim, dim)
        self.type_embed = nn.Parameter(torch.randn(2, dim) * 0.02)  # row 0: image, row 1: text
        self.layers = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: Features, text: Features) -> Features:
        img, img_mask, txt, txt_mask = self._inputs(image, text)
        N = img.shape[1]
        x = torch.cat([self.proj_image(img) + self.type_embed[0],
                       self.proj_text(txt) + self.type_embed[1]], dim=1)  # (B, N+T, dim)
        mask = torch.cat([img_mask, txt_mask], dim=1)  # (B, N+T)
        for layer in self.layers[:-1]:
            x = layer(x, x, mask)
        # Only the text part is returned, so the last layer computes text queries only (over all
        # keys): same result, N fewer query rows.
        t = self.norm(self.layers[-1](x[:, N:], x, mask))  # (B, T, dim)
        pooled = t[:, 0] if self.pool == "cls" else masked_mean(t, txt_mask)  # (B, dim)
        return self._output(t, txt_mask, pooled)


@FUSIONS.register("projection")
class ProjectionFusion(Fusion):
    """Projection into a shared space: Z = W_x X + W_y Y + b (X: text, Y: image).

    tokens[t] = W_x text_t + W_y image_pooled + b; pooled = W_x text_pooled + W_y image_pooled + b.
    With activation="none" and norm=False this is the formula exactly; by default a LayerNorm
    follows, which keeps the output on the scale the heads expect whatever the encoders emit.

    Args:
        activation: nonlinearity applied to Z: "none", "gelu", "relu" or "tanh".
        norm: apply a LayerNorm after (the activation of) Z.
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, activation: str = "none",
                 norm: bool = True):
        super().__init__(image_dim, text_dim, dim)
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"fusion 'projection': activation must be one of "
                              f"{', '.join(_ACTIVATIONS)}, got {activation!r}")
        self.w_x = nn.Linear(text_dim, dim, bias=False)
        self.w_y = nn.Linear(image_dim, dim, bias=False)
        self.b = nn.Parameter(torch.zeros(dim))
        self.act = _ACTIVATIONS[activation]()
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, image: Features, text: Features) -> Features:
        _, _, txt, txt_mask = self._inputs(image, text)
        wy = self.w_y(image.pooled) + self.b  # (B, dim)
        tokens = self.norm(self.act(self.w_x(txt) + wy.unsqueeze(1)))  # (B, T, dim)
        pooled = self.norm(self.act(self.w_x(text.pooled) + wy))       # (B, dim)
        return self._output(tokens, txt_mask, pooled)


@FUSIONS.register("gated")
class GatedFusion(Fusion):
    """Gated Multimodal Unit (Arevalo et al., 2017, arXiv:1702.01992).

    t' = tanh(W_t t), i' = tanh(W_i i), g = sigmoid(W_g [t; i]), z = g * t' + (1 - g) * i':
    a learned, per-feature gate decides how much of each modality passes, per text token (with
    the pooled image) and for the pooled pair. Inputs are LayerNormed per modality first.

    Args:
        dropout: dropout on the fused output.
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, dropout: float = 0.0):
        super().__init__(image_dim, text_dim, dim)
        self.norm_text = nn.LayerNorm(text_dim)
        self.norm_image = nn.LayerNorm(image_dim)
        self.proj_text = nn.Linear(text_dim, dim)
        self.proj_image = nn.Linear(image_dim, dim)
        # W_g [t; i] split as W_gt t + W_gi i (the image half once per sample, broadcast over T).
        self.gate_text = nn.Linear(text_dim, dim)
        self.gate_image = nn.Linear(image_dim, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def _fuse(self, t: torch.Tensor, i_proj: torch.Tensor, i_gate: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate_text(t) + i_gate)  # (..., dim) in (0, 1)
        return self.drop(g * torch.tanh(self.proj_text(t)) + (1 - g) * i_proj)

    def forward(self, image: Features, text: Features) -> Features:
        _, _, txt, txt_mask = self._inputs(image, text)
        i = self.norm_image(image.pooled)  # (B, Di)
        i_proj, i_gate = torch.tanh(self.proj_image(i)), self.gate_image(i)  # (B, dim) each
        tokens = self._fuse(self.norm_text(txt), i_proj.unsqueeze(1), i_gate.unsqueeze(1))  # (B, T, dim)
        pooled = self._fuse(self.norm_text(text.pooled), i_proj, i_gate)  # (B, dim)
        return self._output(tokens, txt_mask, pooled)


@FUSIONS.register("bilinear")
class BilinearFusion(Fusion):
    """Low-rank bilinear pooling: Multi-modal Factorized Bilinear pooling, MFB (Yu et al., 2017,
    arXiv:1708.01471), the factorised form of MLB (Kim et al., 2017).

    z_d = sum_k (U t)_{d,k} * (V i)_{d,k}: a rank-`factors` bilinear form per output feature,
    then MFB's power normalisation sign(z) sqrt(|z|). A LayerNorm takes the place of MFB's L2
    normalisation so the output sits on the same scale as the other fusions'. Tokens pair each
    text token with the pooled image; pooled pairs the two pooled vectors.

    Args:
        factors: rank k of the factorisation (MFB uses 5).
        dropout: dropout on the elementwise product (MFB uses 0.1).
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, factors: int = 5,
                 dropout: float = 0.0):
        super().__init__(image_dim, text_dim, dim)
        if factors < 1:
            raise ConfigError(f"fusion 'bilinear': factors must be at least 1, got {factors}")
        self.factors = factors
        self.norm_text = nn.LayerNorm(text_dim)
        self.norm_image = nn.LayerNorm(image_dim)
        self.u = nn.Linear(text_dim, dim * factors)
        self.v = nn.Linear(image_dim, dim * factors)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def _fuse(self, t: torch.Tensor, vi: torch.Tensor) -> torch.Tensor:
        z = self.drop(self.u(t) * vi)  # (..., dim * k)
        z = z.unflatten(-1, (self.dim, self.factors)).sum(-1)  # (..., dim): sum-pool over factors
        # Signed square root; the epsilon keeps its gradient finite at z = 0.
        z = torch.sign(z) * torch.sqrt(z.abs() + 1e-6)
        return self.norm(z)

    def forward(self, image: Features, text: Features) -> Features:
        _, _, txt, txt_mask = self._inputs(image, text)
        vi = self.v(self.norm_image(image.pooled))  # (B, dim * k)
        tokens = self._fuse(self.norm_text(txt), vi.unsqueeze(1))  # (B, T, dim)
        pooled = self._fuse(self.norm_text(text.pooled), vi)       # (B, dim)
        return self._output(tokens, txt_mask, pooled)


@FUSIONS.register("hop_attention")
class HopAttentionFusion(Fusion):
    """Question-guided hops over position-tagged image tokens, with a relational readout.

    Each of `hops` looks picks the words that name one object of the question (attention over
    the text tokens with a learned per-hop query, conditioned on what the previous hop found),
    then looks for that object among the image tokens (one logit per token, as in stacked
    attention networks, Yang et al. 2016, and MAC's read unit, Hudson & Manning 2018). A hop
    returns three things:

    * what it found: the softmax-weighted image features (B, dim);
    * where: the softmax-weighted token positions (B, 2), when the image encoder gives
      `Features.positions` (zeros otherwise);
    * how many: the sum of the sigmoid of the same logits over the tokens (B, 1) — softmax
      attention forgets counts, a sigmoid gate per token keeps them (cf. Zhang et al., 2018).

    The readout concatenates the hops' outputs, the first-minus-last differences and two
    bilinear terms (the question times the feature difference, and the question times the
    geometry — position difference and positions — elementwise, as in MFB): comparisons such as
    "is A left of B" or "is A larger than B" are products of a question word and a difference.
    Measured on the shapes world (docs/results.md): a plain MLP over the concatenation, or FiLM,
    stayed at chance on relation questions even with exact positions given; one bilinear term
    over [feature difference; geometry] learnt them only slowly (the two position numbers
    drowned among `dim` feature numbers); the separate geometry term learnt them in a few hundred
    steps once the hops landed.

    With `compare`, a comparison term is added to the pooled output: the question's words — the
    mean of their input embeddings (`Features.embeddings`), before the text tower's context —
    times what the first and last hop found *in symbols*: their positions, their difference, the
    first hop's count as a soft one-hot and, when the model has object heads
    (`Features.attributes`), the attributes the heads read where each hop looks, with their
    difference and product. Measured on the demo's VQA model
    (docs/results.md): its hops put the two named objects in the right order on the asked axis
    in 99% of relation questions and read both sizes right in 98% of size questions, yet
    relation and size answers stayed at chance; a readout trained on those frozen features
    learnt them (0.95 / 0.95) only when its question side was the words themselves, not the
    text tower's pooled vector. The term is a product whose question side starts informative,
    so "left" against "right" times the offset is a linear problem, not an XOR to discover.

    With `attribute_match`, each hop's logits gain a term that matches the hop's words to what
    the object heads read on each token: the hop's words (their input embeddings, weighted as the
    hop weighs them) are mapped to a weight per value of the heads, and each token scores those
    weights times the log-odds of what the heads read there, summed — evidence for "red" plus
    evidence for "triangle", as naive Bayes adds it. The hop's count then sums the gates of this
    term alone (plus the hop's bias): "how many red triangles" and "is there a red triangle"
    count what the heads read, which holds for colour-shape pairs the model never saw named
    (the compositional split), where the learnt key-query term does not (docs/results.md:
    comp split 0.74 -> 0.85 on the demo's VQA stage).

    The hop logits come back as `Features.attention` (B, hops, N): the `hop_attention`
    objective can supervise them with the objects a question names (GQA-style annotations),
    and explanations can show them.

    Args:
        hops: number of looks (2 covers questions about one or two objects).
        dropout: dropout in the readout MLP.
        compare: add the comparison term above.
        attribute_match: add the attribute-matching term above to the hop logits.
        attribute_dim: set by the model: how many numbers `Features.attributes` holds per token
            (0 without object heads).
    """

    #: the comparison term reads the first hop's count as a soft one-hot over these values
    COUNT_CENTRES = tuple(range(10))

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, hops: int = 2, dropout: float = 0.0,
                 compare: bool = False, attribute_match: bool = False, attribute_dim: int = 0):
        super().__init__(image_dim, text_dim, dim)
        if not isinstance(hops, int) or hops < 1:
            raise ConfigError(f"fusion 'hop_attention': hops must be a positive integer, got {hops!r}")
        self.hops = hops
        self.img_in = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, dim))
        self.txt_in = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))
        self.cls_in = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))
        self.hop_queries = nn.Parameter(torch.randn(hops, dim) * 0.02)
        self.query_mix = nn.Linear(2 * dim, dim)
        self.q_key, self.img_key, self.img_value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        # Most tokens hold no named object: gates start near 0 (sigmoid(-4) = 0.018), so the count
        # starts near 1 for a 64-token grid instead of N / 2, which swamped the other readout
        # inputs early in training. (A shift of the logits leaves the softmax unchanged.)
        self.gate_bias = nn.Parameter(torch.full((hops,), -4.0))
        # bilinear terms, question (cls + bag of words) x what the hops found: one with the
        # feature difference, one with the geometry (position difference and positions) alone, so
        # the two position numbers are not drowned among `dim` feature numbers
        self.question_features = nn.Linear(2 * dim, dim)
        self.feature_factor = nn.Linear(dim, dim)
        self.question_geometry = nn.Linear(2 * dim, dim)
        self.geometry_factor = nn.Linear(6, dim)
        readout_in = dim + hops * (dim + 3) + 2 + 2 * dim
        self.readout = nn.Sequential(nn.Linear(readout_in, 2 * dim), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(2 * dim, dim), nn.LayerNorm(dim))
        self.tokens_out = nn.Linear(2 * dim, dim)
        self.attribute_dim = attribute_dim if compare or attribute_match else 0
        if attribute_match and not attribute_dim:
            raise ConfigError("fusion 'hop_attention': attribute_match needs a model with object heads "
                              "(model.spec.object_attributes)")
        # words of a hop -> a preference over the heads' values (zero-init: the term starts silent)
        self.match_words = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, attribute_dim)) \
            if attribute_match else None
        if self.match_words is not None:
            nn.init.zeros_(self.match_words[1].weight)
            nn.init.zeros_(self.match_words[1].bias)
        if compare:
            # question words x [position difference, positions, and per hop the attributes read,
            # their difference and product]; LayerNorm: word embeddings start at a tiny scale
            self.compare_words = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))
            self.compare_symbols = nn.Linear(6 + len(self.COUNT_CENTRES) + 4 * self.attribute_dim, dim)
            self.compare_out = nn.Linear(dim, dim)
        else:
            self.compare_words = self.compare_symbols = self.compare_out = None
        self.attention_record: list | None = None  # set by `recording_attention`

    def forward(self, image: Features, text: Features) -> Features:
        img, img_mask, txt, txt_mask = self._inputs(image, text)
        img, txt = self.img_in(img), self.txt_in(txt)           # (B, N, dim), (B, T, dim)
        cls = self.cls_in(text.pooled)                           # (B, dim)
        b, n, d = img.shape
        pos = image.positions
        if pos is None:
            pos = img.new_zeros(n, 2)
        pos = (2 * pos.to(img.dtype) - 1).expand(b, n, 2)        # (B, N, 2) in -1..1
        keys, values = self.img_key(img), self.img_value(img)
        tm = txt_mask.unsqueeze(-1).to(txt.dtype)
        bag = (txt * tm).sum(1) / tm.sum(1).clamp_min(1.0)       # (B, dim) mean of the words
        found, where, logits_all, parts, reads, counts = img.new_zeros(b, d), [], [], [cls], [], []
        attributes = self._attributes(image) if self.attribute_dim else None                     # (B, N, A)
        if self.match_words is not None:
            words = self._words(text)                                                            # (B, T, D_text)
            read = attributes.clamp(1e-4, 1 - 1e-4)
            log_odds = read.log() - (1 - read).log()                                             # (B, N, A)
        for k in range(self.hops):
            # which words name this hop's object
            w = (txt @ (self.hop_queries[k] + found).unsqueeze(-1)).squeeze(-1) / math.sqrt(d)  # (B, T)
            w = w.masked_fill(~txt_mask, torch.finfo(w.dtype).min).softmax(-1)
            q = self.query_mix(torch.cat([(w.unsqueeze(-1) * txt).sum(1), cls], -1))           # (B, dim)
            # where that object is among the image tokens
            logits = (keys @ self.q_key(q).unsqueeze(-1)).squeeze(-1) / math.sqrt(d) + self.gate_bias[k]
            if self.match_words is not None:   # the hop's words x the log of what the heads read
                prefer = self.match_words((w.unsqueeze(-1) * words).sum(1))                      # (B, A)
                match = (log_odds @ prefer.unsqueeze(-1)).squeeze(-1)                            # (B, N)
                logits = logits + match
            logits = logits.masked_fill(~img_mask, -1e4)                                         # (B, N)
            a = logits.softmax(-1)
            if self.attention_record is not None:
                probs = a[:, None, None, :]                                                      # (B, 1, 1, N)
                self.attention_record.append((self, probs))
                a = probs[:, 0, 0]  # downstream reads the recorded tensor, so its gradient is the hop's
            found = (a.unsqueeze(-1) * values).sum(1)                                            # (B, dim)
            xy = (a.unsqueeze(-1) * pos).sum(1)                                                  # (B, 2)
            # how many: the sigmoid gates of the real tokens summed (with attribute_match, of the
            # match term alone)
            gates = logits if self.match_words is None else match + self.gate_bias[k]
            count = (torch.sigmoid(gates) * img_mask).sum(-1, keepdim=True)                      # (B, 1)
            parts += [found, xy, count]
            where.append((found, xy))
            counts.append(count)
            if attributes is not None:
                reads.append((a.unsqueeze(1) @ attributes).squeeze(1))                           # (B, A)
            logits_all.append(logits)
        (f0, p0), (f1, p1) = where[0], where[-1]
        question = torch.cat([cls, bag], -1)                                                     # (B, 2 dim)
        parts += [p0 - p1,
                  self.question_features(question) * self.feature_factor(f0 - f1),
                  self.question_geometry(question) * self.geometry_factor(torch.cat([p0 - p1, p0, p1], -1))]
        pooled = self.readout(torch.cat(parts, -1))                                              # (B, dim)
        if self.compare_words is not None:
            pooled = pooled + self._compare(text, txt_mask, p0, p1, counts[0], reads)
        tokens = self.tokens_out(torch.cat([txt, pooled.unsqueeze(1).expand_as(txt)], -1))      # (B, T, dim)
        out = self._output(tokens, txt_mask, pooled)
        out.attention = torch.stack(logits_all, 1)                                               # (B, K, N)
        return out

    def _attributes(self, image: Features) -> torch.Tensor:
        if image.attributes is None or image.attributes.shape[-1] != self.attribute_dim:
            got = "none" if image.attributes is None else image.attributes.shape[-1]
            raise ConfigError(f"fusion 'hop_attention' with compare: the model's object heads give {got} "
                              f"attribute numbers per token, the fusion was built for {self.attribute_dim}")
        return image.attributes.to(image.tokens.dtype)

    def _words(self, text: Features) -> torch.Tensor:
        """The question's input word embeddings, before the text tower's context (its tokens for a
        tower without word embeddings of its width)."""
        words = text.embeddings
        if words is None or words.shape[-1] != self.text_dim:
            words = text.tokens
        return words

    def _compare(self, text: Features, txt_mask: torch.Tensor, p0, p1, count, reads) -> torch.Tensor:
        """The comparison term (see the class doc): question words x the hops' symbols."""
        words = self._words(text)
        tm = txt_mask.unsqueeze(-1)
        words = words.masked_fill(~tm, 0.0)                                                    # padding: anything
        bag = words.sum(1) / tm.sum(1).clamp_min(1).to(words.dtype)                            # (B, D_text)
        centres = count.new_tensor(self.COUNT_CENTRES)
        symbols = [p0 - p1, p0, p1, torch.exp(-2.0 * (count - centres) ** 2)]  # count: width 0.5
        if reads:
            r0, r1 = reads[0], reads[-1]
            symbols += [r0, r1, r0 - r1, r0 * r1]
        z = self.compare_words(bag) * self.compare_symbols(torch.cat(symbols, -1).to(bag.dtype))
        return self.compare_out(z)
