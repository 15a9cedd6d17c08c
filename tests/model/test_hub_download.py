"""`pretrained=true` downloads from a loopback imitation of the Hub into its cache, then loads offline."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loopback_hub import LoopbackServer, Reply, serving
from safetensors.torch import load_file

from gpt_finetune.model import GPT
from gpt_finetune.model.config import HUB_IDS

REPO_ID = HUB_IDS["gpt2-small"]  # what build_gpt(size="gpt2-small", pretrained=True) asks the Hub for
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_FILES = ("model.safetensors",)  # the Hub redirects these to a content-addressed CDN URL
# The project's entry point in a fresh interpreter: huggingface_hub reads HF_ENDPOINT, HF_HOME and
# HF_HUB_OFFLINE when it is imported.
LOAD = """
import sys
from safetensors.torch import save_file
from gpt_finetune.model.build import build_gpt

model = build_gpt(size="gpt2-small", pretrained=True)
save_file({name: t.contiguous() for name, t in model.state_dict().items()}, sys.argv[1])
"""


def hub_and_cdn_routes(files: dict[str, bytes], cdn_url: str) -> tuple[dict[str, Reply], dict[str, Reply]]:
    """What the Hub answers for `files` at COMMIT on `main`: git files directly (ETag = git blob sha1),
    LFS files by a redirect to the CDN carrying their metadata (X-Linked-Etag = sha256, X-Linked-Size)."""
    hub, cdn = {}, {}
    for name, data in files.items():
        path = f"/{REPO_ID}/resolve/main/{name}"
        if name in LFS_FILES:
            sha256 = hashlib.sha256(data).hexdigest()
            cdn[f"/{sha256}"] = Reply(200, {}, data)
            hub[path] = Reply(
                302,
                {
                    "Location": f"{cdn_url}/{sha256}",
                    "X-Repo-Commit": COMMIT,
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(len(data)),
                },
            )
        else:
            git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            hub[path] = Reply(200, {"X-Repo-Commit": COMMIT, "ETag": f'"{git_sha1}"'}, data)
    return hub, cdn


def load(tmp_path: Path, out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run LOAD with the Hub cache under `tmp_path`, no token, no proxy and `env` (HF_ENDPOINT, ...)."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and not k.lower().endswith("_proxy")
    }
    return subprocess.run(
        [sys.executable, "-c", LOAD, str(out)],
        env={**inherited, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_same_weights(loaded: dict[str, torch.Tensor], model: GPT) -> None:
    expected = model.state_dict()
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.slow
def test_pretrained_size_downloads_into_the_hub_cache_then_loads_offline(
    tiny_model: GPT, tmp_path: Path
) -> None:
    served = tiny_model.save_pretrained(tmp_path / "served")
    files = {name: (served / name).read_bytes() for name in ("config.json", "model.safetensors")}
    with serving(LoopbackServer()) as hub, serving(LoopbackServer()) as cdn:
        hub.routes, cdn.routes = hub_and_cdn_routes(files, cdn.url)
        downloaded = load(tmp_path, tmp_path / "downloaded.safetensors", HF_ENDPOINT=hub.url)
    assert downloaded.returncode == 0, downloaded.stderr[-3000:]
    sha256 = hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert f"GET /{REPO_ID}/resolve/main/config.json" in hub.requests
    assert f"HEAD /{REPO_ID}/resolve/main/model.safetensors" in hub.requests
    assert cdn.requests == [f"GET /{sha256}"]  # the weights came over HTTP, once
    assert_same_weights(load_file(tmp_path / "downloaded.safetensors"), tiny_model)

    repo = tmp_path / "hf" / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    assert (repo / "refs" / "main").read_text() == COMMIT
    for name, data in files.items():
        assert (repo / "snapshots" / COMMIT / name).read_bytes() == data
    assert (repo / "blobs" / sha256).is_file()
    assert not list(repo.rglob("*.incomplete"))

    # The servers are gone: the second load must come from the cache alone.
    offline = load(tmp_path, tmp_path / "offline.safetensors", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert_same_weights(load_file(tmp_path / "offline.safetensors"), tiny_model)
