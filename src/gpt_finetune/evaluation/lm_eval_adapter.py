"""An lm-evaluation-harness model (`gpt-finetune`) for fine-tuned checkpoints: MMLU, HellaSwag, ...

Importing this module registers the model with lm_eval (lm_eval 0.4 finds models only by import). From
Python: `import gpt_finetune.evaluation.lm_eval_adapter` then `lm_eval.simple_evaluate(model="gpt-finetune",
model_args={"run_dir": ...}, tasks=[...])`. From the shell, run lm_eval's own CLI through
`python -m gpt_finetune.evaluation.lm_eval_cli --model gpt-finetune --model_args run_dir=... --tasks ...`.
Needs the optional extra: `pip install -e ".[eval]"`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from gpt_finetune.data.prompts import format_example, format_prompt
from gpt_finetune.devices import resolve_device
from gpt_finetune.errors import UserError
from gpt_finetune.evaluation.run_dir import find_checkpoint, load_finetuned
from gpt_finetune.model import GPT
from gpt_finetune.tokenizer import END_OF_TEXT, END_OF_TEXT_STRING, gpt2_tokenizer

log = logging.getLogger(__name__)
NAME = "gpt-finetune"
# ((context, continuation) or None, context tokens, continuation tokens): what TemplateLM hands over.
TokenRequest = tuple[Any, list[int], list[int]]


def load_model(run_dir: str | None, ckpt_path: str | None, pretrained: str | None) -> tuple[GPT, str]:
    """The GPT to evaluate and its prompt style, from exactly one of the three sources."""
    given = [
        name for name, v in (("run_dir", run_dir), ("ckpt_path", ckpt_path), ("pretrained", pretrained)) if v
    ]
    if len(given) != 1:
        raise UserError(
            f"{NAME}: give exactly one of run_dir=, ckpt_path= or pretrained= (got {given or 'none'})"
        )
    if pretrained:
        return GPT.from_pretrained(pretrained), "alpaca"
    ckpt = Path(ckpt_path) if ckpt_path else find_checkpoint(Path(str(run_dir)))
    if ckpt is None or not ckpt.is_file():
        raise UserError(f"{NAME}: no checkpoint at {ckpt_path or Path(str(run_dir)) / 'checkpoints'}")
    finetuned = load_finetuned(ckpt)
    return finetuned.model, finetuned.prompt_style


def pick_device(device: str | None) -> torch.device:
    """`device` if usable, else CUDA when available, else CPU (lm_eval's CLI asks for cuda by default)."""
    if device is not None and not (device.startswith("cuda") and not torch.cuda.is_available()):
        return resolve_device(device)
    if device is not None:
        log.warning("%s: device=%s is not available; using the CPU", NAME, device)
    return resolve_device("auto")


def batches(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@register_model(NAME)
class GPTFinetuneLM(TemplateLM):
    """Scores and generates with a gpt-finetune model; `batch_size` rows per forward pass."""

    def __init__(
        self,
        run_dir: str | None = None,
        ckpt_path: str | None = None,
        pretrained: str | None = None,
        model: GPT | None = None,
        prompt_style: str | None = None,
        batch_size: int | str = 8,
        device: str | None = None,
        max_length: int | None = None,
        **unused: Any,  # lm_eval passes max_batch_size and others we do not need
    ) -> None:
        super().__init__()
        if model is None:
            model, saved_style = load_model(run_dir, ckpt_path, pretrained)
            prompt_style = prompt_style or saved_style
        self._device = pick_device(device)
        self.model = model.to(self._device).eval()
        self.prompt_style = prompt_style or "alpaca"
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" -> 8
        context = model.config.context_length
        self.max_length = min(int(max_length), context) if max_length is not None else context
        self.tokenizer_encoding = gpt2_tokenizer()

    @property
    def eot_token_id(self) -> int:
        return END_OF_TEXT

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return "gpt2"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """GPT-2 BPE; a literal `<|endoftext|>` becomes the end-of-text token, as in Hugging Face's."""
        return self.tokenizer_encoding.encode(string, allowed_special={END_OF_TEXT_STRING})

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer_encoding.decode(list(tokens))

    @torch.inference_mode()
    def _score_batch(self, rows: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(log-prob sum of the continuation, whether it is the greedy one) per (context, continuation)."""
        inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for ctx, cont in rows]
        width = max(len(x) for x in inputs)
        padded = torch.full((len(inputs), width), END_OF_TEXT, dtype=torch.long)
        for i, x in enumerate(inputs):
            padded[i, : len(x)] = torch.tensor(x)  # right-padded: causal attention never sees the pad
        hidden = self.model.hidden_states(padded.to(self.device))  # (B, T, C)
        results = []
        for i, (x, (_, cont)) in enumerate(zip(inputs, rows, strict=True)):
            n = min(len(cont), len(x))
            # Only the n positions that predict the continuation go through the (vocab-wide) head.
            logprobs = F.log_softmax(self.model.lm_head(hidden[i, len(x) - n : len(x)]).float(), dim=-1)
            target = torch.tensor(cont[-n:], device=self.device)
            total = logprobs.gather(1, target[:, None]).sum().item()
            results.append((total, bool((logprobs.argmax(-1) == target).all())))
        return results

    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
        for chunk in batches(order, self.batch_size):
            scored = self._score_batch([(requests[i][1], requests[i][2]) for i in chunk])
            for i, result in zip(chunk, scored, strict=True):
                results[i] = result
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], result)
            bar.update(len(chunk))
        bar.close()
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in disjoint windows of the context length (as lm_eval's HFLM)."""
        windows: list[TokenRequest] = []
        owners: list[int] = []
        for index, request in enumerate(requests):
            tokens = self.tok_encode(request.args[0])
            for ctx, cont in map(
                make_disjoint_window, get_rolling_token_windows(tokens, END_OF_TEXT, self.max_length, 1)
            ):
                windows.append((None, ctx, cont))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(
            owners, self._loglikelihood_tokens(windows, disable_tqdm), strict=True
        ):
            totals[owner] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled) continuations cut at the first stop string; grouped by identical settings."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        outputs = [""] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1])
            for chunk in batches(indices, self.batch_size):
                texts = self._generate([requests[i].args[0] for i in chunk], kwargs)
                for i, text in zip(chunk, texts, strict=True):
                    outputs[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        return outputs

    def _generate(self, contexts: list[str], kwargs: dict[str, Any]) -> list[str]:
        until = kwargs.get("until") or [END_OF_TEXT_STRING]
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.get("max_gen_toks", 256))
        sample = bool(kwargs.get("do_sample", False))
        temperature = float(kwargs.get("temperature", 1.0)) if sample else 0.0
        room = max(1, self.max_length - max_new)
        prompts = [(self.tok_encode(c) or [END_OF_TEXT])[-room:] for c in contexts]
        generated = self.model.generate(prompts, max_new_tokens=max_new, temperature=temperature)
        texts = []
        for tokens in generated:
            text = self.tok_decode([t for t in tokens if t != END_OF_TEXT])
            for stop in until:
                text = text.split(stop)[0] if stop else text
            texts.append(text)
        return texts

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Chat turns in the model's prompt style: user (and system) turns are instructions."""
        text, instruction = "", ""
        for turn in chat_history:
            if turn["role"] == "assistant":
                record = {"instruction": instruction.strip(), "input": "", "output": turn["content"]}
                text += format_example(record, self.prompt_style) + "\n\n"
                instruction = ""
            else:
                instruction += turn["content"] + "\n"
        if instruction:
            text += format_prompt({"instruction": instruction.strip(), "input": ""}, self.prompt_style)
        return text

    def chat_template(self, chat_template: bool | str = False) -> str:
        return f"gpt-finetune prompt style {self.prompt_style}"
