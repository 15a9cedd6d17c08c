"""Generated tokens as text while they arrive: whole UTF-8 characters only, stop strings held back."""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from gpt_finetune.serving.conversation import cut_at_stop, stop_prefix_held
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer


class TextStream:
    """Feed it tokens one by one; it returns the text that is final so far.

    A token may end inside a multi-byte character (its bytes wait for the next token) and the text may
    end inside a stop string (held until it is known not to be one). `done` turns true at end-of-text or
    at a stop string, which is not part of the text.
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = [s for s in stops if s]
        self.tokenizer = gpt2_tokenizer()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # everything decoded so far (the stop string and what follows it excluded)
        self.sent = 0  # how much of `text` has been returned
        self.done = False
        self.stopped_by: str | None = None  # "stop" (end-of-text or a stop string) when done

    def feed(self, token: int) -> str:
        """The new final text after `token` ("" when it completes nothing yet)."""
        if self.done:
            return ""
        if token == END_OF_TEXT:
            return self.finish(stopped=True)
        self.text += self.decoder.decode(self.tokenizer.decode_single_token_bytes(token))
        text, found = cut_at_stop(self.text, self.stops)
        if found:
            self.text = text
            return self.finish(stopped=True)
        ready = len(self.text) - stop_prefix_held(self.text, self.stops)
        new, self.sent = self.text[self.sent : ready], max(self.sent, ready)
        return new

    def finish(self, stopped: bool = False) -> str:
        """The text still held back (the stream ended: end-of-text, a stop string or the token limit)."""
        if not self.done:
            if not stopped:
                self.text += self.decoder.decode(b"", final=True)
            self.done, self.stopped_by = True, "stop" if stopped else "length"
        new, self.sent = self.text[self.sent :], len(self.text)
        return new
