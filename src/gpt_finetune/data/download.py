"""Fetch a data file from an http(s) URL once into a local cache; later runs read the cache offline."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from gpt_finetune.artifacts import atomic_path
from gpt_finetune.errors import UserError


def cache_root() -> Path:
    """`$GPT_FINETUNE_CACHE`, else `$XDG_CACHE_HOME/gpt_finetune`, else `~/.cache/gpt_finetune`."""
    if "GPT_FINETUNE_CACHE" in os.environ:
        return Path(os.environ["GPT_FINETUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt_finetune"


def is_url(source: str) -> bool:
    return "://" in source


def cached_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """Where `url` is cached: a hash of the URL keeps sources apart; the file name stays readable."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "download"
    return Path(cache_dir or cache_root() / "data") / f"{digest}-{name}"


def fetch(url: str, cache_dir: str | Path | None = None, timeout: float = 30.0) -> Path:
    """The local copy of `url`, downloading it (atomically) only if it is not cached yet."""
    if not url.startswith(("http://", "https://")):
        raise UserError(
            f"{url}: only http(s) URLs and hf://datasets/... are read; "
            "download the file and pass its local path"
        )
    path = cached_path(url, cache_dir)
    if path.is_file():
        return path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(path) as tmp:
            tmp.write_bytes(response.read())
    except (OSError, http.client.HTTPException, ValueError) as error:
        # URLError, HTTPError, timeouts and refused connections are OSErrors; a body cut short is an
        # HTTPException (IncompleteRead); a malformed host or port is a ValueError (InvalidURL).
        reason: object
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP {error.code} {error.reason}"
        else:
            reason = getattr(error, "reason", None) or error
        raise UserError(
            f"{url}: cannot download ({reason}) and no cached copy at {path}; "
            "check the network or pass a local file (data.path=FILE)"
        ) from None
    return path
