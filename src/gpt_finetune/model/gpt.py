"""The GPT-2 network: learned positions, pre-LN blocks, GELU-tanh MLP, SDPA attention.

Parameter names follow the Hugging Face checkpoint (`transformer.h.0.attn.c_attn.weight`, ...), so loading
OpenAI's weights is a name-for-name copy; only the Conv1D matrices are stored transposed there.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gpt_finetune.model import generation, weights
from gpt_finetune.model.config import GPTConfig
from gpt_finetune.model.kv_cache import Cache, KVCache


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.c_attn = nn.Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.emb_dim, config.emb_dim)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: Cache | None,
        layer: int,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        # q, k, v: (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, S, hs), S = cached + T
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.emb_dim, 4 * config.emb_dim)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.emb_dim, config.emb_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.emb_dim, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.emb_dim, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, cache: Cache | None, layer: int
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.ModuleDict):
    """GPT-2's `transformer` (a ModuleDict, as in the checkpoint), its entries typed for the checker."""

    wte: nn.Embedding
    wpe: nn.Embedding
    drop: nn.Dropout
    h: nn.ModuleList
    ln_f: nn.LayerNorm


class GPT(nn.Module):
    """GPT-2. `model(input_ids) -> logits (B, T, vocab)`; see `generate` and `from_pretrained`."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = Transformer(
            {
                "wte": nn.Embedding(config.vocab_size, config.emb_dim),
                "wpe": nn.Embedding(config.context_length, config.emb_dim),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList(Block(config) for _ in range(config.n_layers)),
                "ln_f": nn.LayerNorm(config.emb_dim, eps=config.layer_norm_eps),
            }
        )
        self.lm_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layers).
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        else:
            self.untie_head()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def untie_head(self) -> None:
        """Give the LM head its own weights, starting as a copy of the token embedding."""
        self.lm_head.weight = nn.Parameter(self.transformer.wte.weight.detach().clone())

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameter count; the position embedding is left out when `non_embedding` (as in MFU)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (B, T, emb_dim); the mask is boolean, True where attention is allowed."""
        T = input_ids.shape[1]
        if position_ids is None:
            if cache is not None and not isinstance(cache, KVCache):
                raise ValueError("a step over a SlotCache needs position_ids (SlotCache.step gives them)")
            start = cache.length if cache is not None else 0
            if start + T > self.config.context_length:
                raise ValueError(
                    f"sequence of {start + T} tokens exceeds the context length {self.config.context_length}"
                )
            position_ids = torch.arange(start, start + T, device=input_ids.device).unsqueeze(0)
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(position_ids))
        for layer, block in enumerate(self.transformer.h):
            if self.config.gradient_checkpointing and self.training:
                x = checkpoint(block, x, attn_mask, cache, layer, use_reentrant=False)
            else:
                x = block(x, attn_mask, cache, layer)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.lm_head(self.hidden_states(input_ids, **kwargs))

    @torch.no_grad()
    def generate(self, prompts: list[list[int]] | torch.Tensor, **kwargs: Any) -> list[list[int]]:
        """Continue each prompt; see `gpt_finetune.model.generation.generate` for the options."""
        return generation.generate(self, prompts, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **overrides: Any) -> GPT:
        """Load Hub weights (`gpt2-medium`, `openai-community/gpt2`...), a directory or .safetensors file."""
        config, tensors = weights.read_pretrained(name_or_path)
        model = cls(config.with_(**overrides))
        weights.load_weights(model, tensors, str(name_or_path))
        return model

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `config.json` + `model.safetensors` in the Hugging Face GPT-2 layout."""
        return weights.save_pretrained(self, directory)
