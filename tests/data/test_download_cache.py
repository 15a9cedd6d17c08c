"""The cache a URL downloads into when nothing overrides it (every other test passes `cache_dir=`): the one
`python train.py` uses for the book's data: `$GPT_FINETUNE_CACHE`, else `$XDG_CACHE_HOME/gpt_finetune`,
else `~/.cache/gpt_finetune`, under `data/`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loopback_hub import LoopbackServer, Reply, serving

from gpt_finetune.data.download import cached_path
from gpt_finetune.data.instructions import load_records

RECORDS = [{"instruction": "Say hi.", "input": "", "output": "hi"}]


@pytest.mark.parametrize("setting", ["home", "XDG_CACHE_HOME", "GPT_FINETUNE_CACHE"])
def test_a_url_is_cached_in_the_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    for name in ("XDG_CACHE_HOME", "GPT_FINETUNE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("no_proxy", "*")
    expected = {
        "home": tmp_path / "home" / ".cache" / "gpt_finetune" / "data",
        "XDG_CACHE_HOME": tmp_path / "xdg" / "gpt_finetune" / "data",
        "GPT_FINETUNE_CACHE": tmp_path / "mine" / "data",
    }[setting]
    if setting != "home":
        monkeypatch.setenv(setting, str(tmp_path / ("xdg" if setting == "XDG_CACHE_HOME" else "mine")))
    with serving(LoopbackServer()) as server:
        server.routes = {"/records.json": Reply(200, {}, json.dumps(RECORDS).encode())}
        url = f"{server.url}/records.json"
        assert load_records(url) == RECORDS
    assert cached_path(url).parent == expected and cached_path(url).is_file()
    assert load_records(url) == RECORDS  # the server is gone: read from that cache
