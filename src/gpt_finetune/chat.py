"""`python chat.py run_dir=RUN`: talk to an instruction run in the terminal, or classify lines.

Answers stream to stdout as they are generated; notes (the banner, what a slash command changed, the
conversation being shortened) go to stderr, so piped output holds only answers. The conversation is
multi-turn (`serving.conversation.render_messages`); when it outgrows the context the oldest exchanges
are forgotten. `prompt="..."` answers once and exits: with greedy settings the text is exactly
`GPT.generate`'s tokens, decoded, up to end-of-text. A classification run prints `label<TAB>probability`.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from omegaconf import DictConfig

from gpt_finetune.config import register_resolvers
from gpt_finetune.errors import UserError, run_command
from gpt_finetune.model.sampling import sampling_problems
from gpt_finetune.serving.conversation import prompt_tokens, stop_strings
from gpt_finetune.serving.loading import UsableModel, cast_for_decoding, check_decode_dtype, load_configured
from gpt_finetune.serving.prompt_interrupt import interruptible_prompt
from gpt_finetune.serving.streaming import TextStream
from gpt_finetune.tokenizer import gpt2_tokenizer

Message = dict[str, str]
PROMPT = "> "
HELP = """\
/temperature T   sampling temperature (0 = greedy)
/top_k K         sample from the K most likely tokens (/top_k none: from all)
/top_p P         sample from the nucleus: the fewest tokens with probability P (/top_p none: all)
/max_tokens N    answer with at most N tokens
/seed S          seed for sampling (/seed none: a fresh draw each answer)
/reset           forget the conversation (the system message stays)
/help            this list and the current settings
/quit            leave (or Ctrl-D); Ctrl-C stops an answer"""
CLASSIFY_HELP = "type a text to classify it (label, probability); /quit or Ctrl-D leaves"


def note(text: str) -> None:
    """A line for the person at the terminal (stderr: piped stdout keeps only answers)."""
    print(text, file=sys.stderr, flush=True)


@dataclass
class Settings:
    """How answers are generated (`generate.*`); the slash commands change them."""

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    seed: int | None = None
    top_p: float | None = None

    @classmethod
    def from_config(cls, node: DictConfig) -> Settings:
        """The `generate` config node, checked; every problem in one line naming the key."""
        settings = cls(node.max_new_tokens, node.temperature, node.top_k, node.seed, node.top_p)
        problems = [f"generate.{p}" for p in settings.problems()]
        if problems:
            raise UserError("; ".join(problems))
        return settings

    def problems(self) -> list[str]:
        """What is wrong, one `name=value: fix` phrase each (the bounds the server holds requests to)."""
        found = []
        if self.max_new_tokens < 1:
            found.append(f"max_new_tokens={self.max_new_tokens}: use a positive number of tokens")
        vocab = gpt2_tokenizer().n_vocab
        return found + sampling_problems(self.temperature, self.top_k, self.top_p, self.seed, vocab)

    def describe(self) -> str:
        top_k = "none" if self.top_k is None else self.top_k
        top_p = "none" if self.top_p is None else f"{self.top_p:g}"
        seed = "none" if self.seed is None else self.seed
        return (
            f"temperature {self.temperature:g}, top_k {top_k}, top_p {top_p}, "
            f"max_tokens {self.max_new_tokens}, seed {seed}"
        )


class Conversation:
    """A multi-turn chat with an instruction model, each answer streamed to stdout as it is generated."""

    def __init__(self, model: UsableModel, settings: Settings, system: str | None = None) -> None:
        self.model, self.settings = model, settings
        self.system: list[Message] = [{"role": "system", "content": system}] if system else []
        self.turns: list[Message] = []
        self.stops = stop_strings(model.prompt_style)
        self.context = model.gpt.config.context_length
        self.interrupted = False

    def reset(self) -> None:
        self.turns = []

    def encode(self, messages: list[Message]) -> list[int]:
        return prompt_tokens(messages, self.model.prompt_style)

    def fitted_prompt(self) -> list[int]:
        """The conversation's tokens, its oldest exchanges forgotten until it leaves room to answer."""
        room = self.context - min(self.settings.max_new_tokens, self.context // 2)
        forgotten = 0
        tokens = self.encode(self.system + self.turns)
        while len(tokens) > room and len(self.turns) > 1:
            del self.turns[:2]  # the oldest user turn and its answer
            forgotten += 1
            tokens = self.encode(self.system + self.turns)
        if forgotten:
            note(f"(forgot the oldest {forgotten} exchange(s): the conversation outgrew the context)")
        if len(tokens) > room:
            note(f"(this message is {len(tokens)} tokens, the context leaves {room}: only its end is read)")
        return tokens

    def ask(self, text: str) -> str:
        """Answer `text` as the next user turn; the answer (as printed) joins the conversation."""
        self.turns.append({"role": "user", "content": text})
        answer = self.stream(self.fitted_prompt(), self.stops)
        self.turns.append({"role": "assistant", "content": answer})
        return answer

    def stream(self, prompt: list[int], stops: list[str]) -> str:
        """Generate from `prompt`, printing text as it becomes final; Ctrl-C stops it there."""
        stream = TextStream(stops)

        def on_token(new: dict[int, int]) -> list[int] | None:
            sys.stdout.write(stream.feed(new[0]))
            sys.stdout.flush()
            return [0] if stream.done or self.interrupted else None

        s = self.settings
        with self.interruptible():
            self.model.gpt.generate(
                [prompt],
                max_new_tokens=s.max_new_tokens,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                seed=s.seed,
                on_token=on_token,
            )
        print(stream.finish(), flush=True)
        if self.interrupted:
            note("(stopped)")
        return stream.text

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Ctrl-C stops the answer at the next token (twice: at once) instead of ending the chat."""
        self.interrupted = False

        def stop(signum: int, frame: FrameType | None) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True

        previous = signal.signal(signal.SIGINT, stop)
        try:
            yield
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            signal.signal(signal.SIGINT, previous)


def classify(model: UsableModel, text: str) -> None:
    """Print the most likely label of `text` and its probability, tab-separated."""
    assert model.classifier is not None  # a classification run
    probs = model.classifier.predict_proba([text])[0]
    best = int(probs.argmax())
    print(f"{model.labels[best]}\t{float(probs[best]):.4f}", flush=True)


def number(text: str, kind: type[int] | type[float], optional: bool = False) -> Any:
    """`text` as a number of `kind` (or None for `none` when optional); ValueError otherwise."""
    if optional and text.lower() in ("none", "null"):
        return None
    return kind(text)


SETTINGS = {  # slash command -> (setting, type, may be none, usage)
    "/temperature": ("temperature", float, False, "/temperature 0.7 (0 = greedy)"),
    "/top_k": ("top_k", int, True, "/top_k 40 or /top_k none"),
    "/top_p": ("top_p", float, True, "/top_p 0.9 or /top_p none"),
    "/max_tokens": ("max_new_tokens", int, False, "/max_tokens 200"),
    "/seed": ("seed", int, True, "/seed 123 or /seed none"),
}


def slash_command(line: str, chat: Conversation | None) -> bool:
    """Carry out a slash command (`chat` is None for a classification run); False for /quit."""
    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    if name in ("/quit", "/exit"):
        return False
    if name == "/help":
        note(HELP + f"\nnow: {chat.settings.describe()}" if chat is not None else CLASSIFY_HELP)
    elif name not in (*SETTINGS, "/reset"):
        note(f"unknown command {name}; /help lists the commands")
    elif chat is None:
        note(f"{name} is for instruction runs; this run classifies (/help)")
    elif name == "/reset":
        chat.reset()
        note("(conversation forgotten)")
    else:
        change_setting(chat.settings, name, arg)
    return True


def change_setting(settings: Settings, name: str, arg: str) -> None:
    """Set the setting of slash command `name` to `arg`, or say how to use the command."""
    key, kind, optional, usage = SETTINGS[name]
    old = getattr(settings, key)
    try:
        setattr(settings, key, number(arg, kind, optional))
        problems = settings.problems()
    except ValueError:
        problems = [f"{arg!r} is not a number"]
    if problems:
        setattr(settings, key, old)
        note(f"{name}: {problems[0]}; e.g. {usage}")
    else:
        note(f"({settings.describe()})")


def read_lines(interactive: bool) -> Iterator[str]:
    """The lines typed (with line editing and history on a terminal), until end of input."""
    if interactive:
        import readline  # noqa: F401  (input() edits lines and keeps history once it is loaded)
    with interruptible_prompt():  # Ctrl-C at the prompt leaves even when a library thread takes SIGINT
        while True:
            try:
                yield input(PROMPT if interactive else "")
            except EOFError:
                if interactive:
                    print()  # the shell prompt starts on its own line
                return


def converse(model: UsableModel, chat: Conversation | None, interactive: bool) -> None:
    """Answer (or classify) each line until /quit or end of input."""
    if interactive:
        what = "classifies each line" if chat is None else f"prompt style {model.prompt_style}"
        note(f"{model.name} ({what}); /help lists the commands, Ctrl-D leaves")
    for line in read_lines(interactive):
        if line.startswith("/"):
            if not slash_command(line, chat):
                return
        elif not line.strip():
            continue
        elif chat is None:
            classify(model, line)
        else:
            chat.ask(line)


def chat(cfg: DictConfig) -> None:
    """Load the model `cfg` names, then answer `cfg.prompt` once or converse line by line."""
    settings = Settings.from_config(cfg.generate)
    check_decode_dtype(str(cfg.dtype))
    model = load_configured(cfg)
    cast_for_decoding(model, str(cfg.dtype))
    if cfg.prompt is not None and not str(cfg.prompt).strip():
        raise UserError('prompt is empty; pass a text: prompt="..." (or leave it out to chat)')
    if model.kind == "classify":
        if cfg.prompt is not None:
            return classify(model, str(cfg.prompt))
        return converse(model, None, sys.stdin.isatty())
    conversation = Conversation(model, settings, cfg.system)
    if cfg.prompt is None:
        return converse(model, conversation, sys.stdin.isatty())
    messages = [*conversation.system, {"role": "user", "content": str(cfg.prompt)}]
    conversation.stream(conversation.encode(messages), stops=[])  # exactly the tokens, to end-of-text
    if conversation.interrupted:
        raise KeyboardInterrupt  # a partial answer: exit 130, as for Ctrl-C anywhere else


def main(cfg: DictConfig) -> None:
    """Entry point for `chat.py`: user errors as one line on stderr and exit code 2; Ctrl-C (except
    while answering in a chat, which stops the answer) exits 130 without a traceback."""
    register_resolvers()
    try:
        run_command(chat, cfg)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(130) from None
