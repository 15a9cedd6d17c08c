"""Pre-allocated key/value cache for incremental decoding."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, (n_layers, B, nh, max_length, hs), filled left to right."""

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        max_length: int,
        head_dim: int,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (n_layers, batch_size, n_heads, max_length, head_dim)
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.max_length = max_length
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, nh, T, hs) keys/values; return all keys/values so far, (B, nh, S, hs)."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} requested")
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n: int) -> None:
        """Mark `n` more positions as filled (called once per forward, after all layers)."""
        self.length += n
