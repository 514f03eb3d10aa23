"""A small vision transformer (Dosovitskiy et al. 2021) for 28-32 px images.

Patch size 4 (a 32x32 image gives 8x8 = 64 patches, 28x28 gives 7x7), a class token and a
learned position embedding, ``spec.depth`` pre-norm blocks, a final LayerNorm and a Linear head
on the class token. Embedding dim ``32 * spec.width`` with 4 heads, MLP ratio 2 and GELU: with
depth 7 and width 8 this is the layout of ViT-Lite-7/4 (Hassani et al. 2021, dim 256, 4 heads,
MLP 512), a ViT known to train on CIFAR from scratch; width 1 is a tiny one for CPU tests.

Every weight lives in an ``nn.Conv2d`` (the patch embedding) or ``nn.Linear`` (qkv, output
projection, MLP, head), which is what the quantizer swaps, so attention is written out with its
own Linear layers instead of ``nn.MultiheadAttention`` (which hides its projections in
functional calls). The attention product is plain matmul + softmax rather than
``scaled_dot_product_attention`` because the fused kernels are not twice differentiable, and the
Hessian measures need Hessian-vector products. ``spec.dropout`` > 0 adds dropout after the
attention projection and after the MLP. Linear weights and the embeddings start from a normal of
std 0.02 truncated at +-2 (torch's global RNG, as everywhere).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from qgen.config import ModelSpec
from qgen.errors import QgenError
from qgen.models.registry import dropout_or_none, register_model

PATCH = 4
HEADS = 4
DIM_PER_WIDTH = 32
MLP_RATIO = 2


class Attention(nn.Module):
    """Multi-head self-attention with explicit ``qkv`` and ``proj`` Linear layers."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Sequential(*dropout_or_none(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, dim) -> (batch, tokens, dim)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (batch, heads, tokens, head_dim)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(dim, mlp_ratio * dim)),
            ("act", nn.GELU()),
            ("fc2", nn.Linear(mlp_ratio * dim, dim)),
            *[("drop", m) for m in dropout_or_none(dropout)],
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two residual branches."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding (``patch_embed``), class token, position embedding, ``blocks``,
    ``norm`` and the ``head`` classifier (the logits layer)."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int, depth: int,
                 dim: int, heads: int = HEADS, mlp_ratio: int = MLP_RATIO, patch: int = PATCH,
                 dropout: float = 0.0) -> None:
        super().__init__()
        tokens = (input_size // patch) ** 2 + 1
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, dropout)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C, H, W) -> (batch, num_classes) logits from the class token."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (batch, patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register_model("vit")
def build_vit(spec: ModelSpec, in_channels: int, num_classes: int, input_size: int) -> ViT:
    """ViT factory: ``spec.depth`` blocks, dim ``32 * spec.width``, 4 heads; the input size
    must be a multiple of the patch size 4."""
    if input_size % PATCH:
        raise QgenError(f"data.input_size: vit needs a multiple of its patch size {PATCH} "
                        f"(e.g. 28 or 32); got {input_size}")
    return ViT(in_channels, num_classes, input_size, spec.depth, DIM_PER_WIDTH * spec.width,
               dropout=spec.dropout)
