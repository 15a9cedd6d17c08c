"""Where a data file comes from: a local path, an http(s) URL (downloaded once into the cache), or a Hub
dataset (`hf://datasets/...`, through huggingface_hub's cache); every data kind reads through here."""

from __future__ import annotations

from pathlib import Path

from gpt_finetune.data.download import fetch, is_url
from gpt_finetune.data.hub import hub_files, is_hub
from gpt_finetune.errors import UserError


def local_files(source: str, cache_dir: str | Path | None, expected: str) -> list[tuple[Path, str]]:
    """(local file, name for messages) for each file `source` stands for; a missing local file is a
    one-line error saying that data.path should name `expected` (e.g. "a JSON or JSONL file of ...")."""
    if is_hub(source):
        return hub_files(source)
    if is_url(source):
        return [(fetch(source, cache_dir), source)]
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"{source}: no such file; set data.path to {expected}")
    return [(path, source)]


def prefetch(source: str, cache_dir: str | Path | None) -> None:
    """Download a remote source into its cache (a DataModule's `prepare_data`); local files are left."""
    if is_hub(source):
        hub_files(source)
    elif is_url(source):
        fetch(source, cache_dir)
