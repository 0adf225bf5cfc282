"""Captions to cross-attention tokens: the text conditioning of the world's base UNet.

SD2.1 conditions its UNet on OpenCLIP-ViT-H's text tower: every token's
state from the *penultimate* transformer layer, through the final layer
norm (Stability's ``FrozenOpenCLIPEmbedder``, ``layer="penultimate"``), all
77 positions padding included, the tower frozen. `CaptionEncoder` does the
same with an open_clip `CLIP` (the embedded world's, `anydoor.world.load_clip`):
(B, context, width) states whose width is the UNet's cross-attention width.
The empty caption ("") gives the unconditional tokens classifier-free
guidance and caption dropout use, as SD's.
"""

from __future__ import annotations

import torch
from torch import nn


class CaptionEncoder(nn.Module):
    """Frozen per-token text states of an open_clip CLIP text tower.

    Args:
        clip: an open_clip ``CLIP`` (its ``token_embedding``, ``positional_embedding``,
            ``transformer``, ``ln_final`` and ``attn_mask`` are used).
        tokenizer: open_clip tokenizer: list of captions -> (B, context) int64.
        skip_last_layers: transformer layers left out at the end (1: the penultimate layer, SD2.1's choice).
    """

    def __init__(self, clip: nn.Module, tokenizer, skip_last_layers: int = 1):
        super().__init__()
        layers = len(clip.transformer.resblocks)
        if not 0 <= skip_last_layers < layers:
            raise ValueError(f"skip_last_layers must be in [0, {layers}), got {skip_last_layers!r}")
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.resblocks = nn.ModuleList(list(clip.transformer.resblocks)[: layers - skip_last_layers])
        self.batch_first = getattr(clip.transformer, "batch_first", True)
        self.ln_final = clip.ln_final
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.tokenizer = tokenizer
        self.requires_grad_(False).eval()

    @property
    def width(self) -> int:
        return self.token_embedding.embedding_dim

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError(f"captions must be a list of strings, got {captions!r:.80}")
        return self.tokenizer(list(captions))

    @torch.no_grad()
    def forward(self, captions: list[str]) -> torch.Tensor:
        """(B, context, width) token states of the captions."""
        tokens = self.tokenize(captions).to(self.token_embedding.weight.device)
        x = self.token_embedding(tokens) + self.positional_embedding
        if not self.batch_first:
            x = x.transpose(0, 1)
        for block in self.resblocks:
            x = block(x, attn_mask=self.attn_mask)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return self.ln_final(x)

    def unconditional(self, batch_size: int = 1) -> torch.Tensor:
        """The empty caption's tokens, (batch_size, context, width)."""
        return self([""]).expand(batch_size, -1, -1)


def world_caption_encoder(root=None) -> CaptionEncoder:
    """The embedded world CLIP's text tower as a `CaptionEncoder` (hash-checked shipped weights)."""
    from anydoor import world

    clip, tokenizer = world.load_clip(root)
    return CaptionEncoder(clip, tokenizer)
