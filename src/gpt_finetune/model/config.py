"""GPT-2 hyper-parameters and the table of named sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from gpt_finetune.errors import UserError
from gpt_finetune.tokenizer import END_OF_TEXT

# size name -> (n_layers, n_heads, emb_dim); "tiny" is for tests and quick CPU runs.
SIZES: dict[str, tuple[int, int, int]] = {
    "gpt2-small": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
    "tiny": (2, 2, 64),
}

# Hub ids accepted for each size; "gpt2" is the Hub's name for gpt2-small.
HUB_IDS: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}


@dataclass(frozen=True)
class GPTConfig:
    """Shape and regularisation of a GPT-2 network."""

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    dropout: float = 0.0
    qkv_bias: bool = True
    tie_embeddings: bool = True
    layer_norm_eps: float = 1e-5
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.emb_dim % self.n_heads != 0:
            raise UserError(f"emb_dim={self.emb_dim} is not divisible by n_heads={self.n_heads}")

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> GPTConfig:
        """Config for a named size (`gpt2-small` ... `gpt2-xl`, `tiny`), with field overrides."""
        name = size.removeprefix("openai-community/")
        name = "gpt2-small" if name == "gpt2" else name
        if name not in SIZES:
            raise UserError(f"unknown model size {size!r}; valid sizes: {', '.join(SIZES)}")
        n_layers, n_heads, emb_dim = SIZES[name]
        return cls(n_layers=n_layers, n_heads=n_heads, emb_dim=emb_dim, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> GPTConfig:
        return replace(self, **changes)

    def training_flops(self, rows: int, width: int, frozen: bool = False, adapters: int = 0) -> int:
        """Model FLOPs of one forward + backward pass over a `rows` x `width` batch (the MFU numerator).

        6 per matmul parameter per token (the blocks, final norm and LM head at every position; embedding
        lookups are free) plus QK^T and AV, 12 * layers * emb_dim * width per token, counted without the
        causal mask's savings as Megatron and PaLM do. A `frozen` base (LoRA) computes no weight gradients:
        4 per parameter per token, plus 6 per parameter of its `adapters`.
        """
        c, layers = self.emb_dim, self.n_layers
        matmul = layers * (12 * c * c + 13 * c) + 2 * c + self.vocab_size * c
        attention = 12 * layers * c * width
        return rows * width * ((4 if frozen else 6) * matmul + 6 * adapters + attention)

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face `GPT2Config` dictionary for this shape."""
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_positions": self.context_length,
            "n_ctx": self.context_length,
            "n_embd": self.emb_dim,
            "n_layer": self.n_layers,
            "n_head": self.n_heads,
            "n_inner": None,
            "activation_function": "gelu_new",
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "layer_norm_epsilon": self.layer_norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": END_OF_TEXT,
            "eos_token_id": END_OF_TEXT,
        }

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str) -> GPTConfig:
        """Read a Hugging Face GPT-2 `config.json` dictionary; `source` names it in errors."""
        if hf.get("model_type", "gpt2") != "gpt2":
            raise UserError(f"{source}: model_type {hf.get('model_type')!r} is not gpt2")
        if hf.get("n_inner") not in (None, 4 * hf.get("n_embd", 768)):
            raise UserError(f"{source}: n_inner={hf['n_inner']} is not 4 * n_embd; not a GPT-2 shape")
        try:
            return cls(
                vocab_size=hf.get("vocab_size", 50257),
                context_length=hf.get("n_positions", 1024),
                emb_dim=hf["n_embd"],
                n_layers=hf["n_layer"],
                n_heads=hf["n_head"],
                layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                tie_embeddings=hf.get("tie_word_embeddings", True),
            )
        except KeyError as missing:
            raise UserError(f"{source}: config.json lacks {missing}; is this a GPT-2 checkpoint?") from None
