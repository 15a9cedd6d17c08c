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


class SlotCache:
    """Keys and values of up to `slots` independent rows, (n_layers, slots, nh, capacity, hs).

    Each slot holds one row and has its own length (tokens cached), so rows that started at different
    times from prompts of different lengths decode in one forward pass: a decoding step covers slots
    `[0, B)` (rows are kept packed at the front), writes each row's new key/value at that row's own length,
    and attends over the first `span` positions with the positions past each row's length masked out.
    Prompts are encoded elsewhere (a `KVCache` of their own) and copied in with `store`. The time axis
    grows by doubling, up to `max_capacity`, as longer rows arrive.
    """

    def __init__(
        self,
        n_layers: int,
        slots: int,
        n_heads: int,
        head_dim: int,
        *,
        max_capacity: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.shape = (n_layers, slots, n_heads, 0, head_dim)
        self.max_capacity = max_capacity
        self.device, self.dtype = device, dtype
        self.keys = torch.zeros(self.shape, device=device, dtype=dtype)
        self.values = torch.zeros(self.shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self._rows = 0  # slots the current forward covers
        self._span = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def reserve(self, length: int) -> None:
        """Make room for `length` positions per slot (at most `max_capacity`), keeping what is cached."""
        if length <= self.capacity:
            return
        if length > self.max_capacity:
            raise ValueError(f"a row of {length} positions exceeds the cache's {self.max_capacity}")
        capacity = min(max(length, 2 * self.capacity, 64), self.max_capacity)
        n_layers, slots, n_heads, _, head_dim = self.shape
        shape = (n_layers, slots, n_heads, capacity, head_dim)
        # Zeros, not empty: a step reads past a short row's length (masked out, weight 0), and 0 x NaN
        # from uninitialised memory would still poison that row.
        keys = torch.zeros(shape, device=self.device, dtype=self.dtype)
        values = torch.zeros(shape, device=self.device, dtype=self.dtype)
        used = self.capacity
        keys[:, :, :, :used] = self.keys
        values[:, :, :, :used] = self.values
        self.keys, self.values = keys, values

    def store(self, slot: int, cache: KVCache, row: int, length: int) -> None:
        """Copy the first `length` positions of `row` in an encoded `cache` into `slot`."""
        self._clear_past(slot, length)
        self.keys[:, slot, :, :length] = cache.keys[:, row, :, :length]
        self.values[:, slot, :, :length] = cache.values[:, row, :, :length]
        self.lengths[slot] = length

    def move(self, source: int, target: int) -> None:
        """Put the row in slot `source` into slot `target` (a row left; the rows stay packed)."""
        length = int(self.lengths[source])
        self._clear_past(target, length)
        self.keys[:, target, :, :length] = self.keys[:, source, :, :length]
        self.values[:, target, :, :length] = self.values[:, source, :, :length]
        self.lengths[target] = length

    def _clear_past(self, slot: int, length: int) -> None:
        """Zero what the slot's previous row left past `length`. A step reads a short row's slot up to the
        longest row's span with those positions masked out (weight 0), and 0 x NaN would still poison it:
        every position past a slot's length is kept zero (a row that went NaN leaves nothing behind)."""
        old = int(self.lengths[slot])
        if old > length:
            self.keys[:, slot, :, length:old] = 0
            self.values[:, slot, :, length:old] = 0

    def step(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepare a decoding step of one token for slots `[0, rows)`: their position ids (rows, 1) and
        the boolean attention mask (rows, 1, 1, span) that lets each see its cached tokens and itself."""
        lengths = self.lengths[:rows]
        self._rows, self._span = rows, int(lengths.max()) + 1
        self.reserve(self._span)
        positions = torch.arange(self._span, device=self.device)
        return lengths[:, None], (positions[None, :] <= lengths[:, None])[:, None, None, :]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (rows, nh, 1, hs) keys/values at each row's own length; return all of the
        rows' keys/values, (rows, nh, span, hs)."""
        rows, span = self._rows, self._span
        slots = torch.arange(rows, device=self.device)
        at = self.lengths[:rows]
        self.keys[layer, slots, :, at] = k[:, :, 0]
        self.values[layer, slots, :, at] = v[:, :, 0]
        return self.keys[layer, :rows, :, :span], self.values[layer, :rows, :, :span]

    def advance(self, n: int) -> None:
        """Each row of the step now holds `n` more positions (called once per forward, after all layers)."""
        self.lengths[: self._rows] += n


Cache = KVCache | SlotCache  # what attention layers store into and read from
