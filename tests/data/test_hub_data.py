"""`data.path=hf://datasets/...` for every data kind, from a loopback imitation of the Hub into the Hugging
Face cache: a repo's train split by itself, a named file, a revision; a second read with the network off.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported: each read runs in a
fresh interpreter (as in tests/model/test_hub_download.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loopback_hub import LoopbackServer, Reply, serving

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
CHAT = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]
OTHER = [{"role": "user", "content": "Name a number."}, {"role": "assistant", "content": "Seven."}]
READ = """
import json, sys
from gpt_finetune.data.classification import load_examples
from gpt_finetune.data.conversations import load_conversations
from gpt_finetune.data.instructions import load_records
from gpt_finetune.data.preference_datamodule import load_pairs

source = json.loads(sys.argv[1])
spam = load_examples(source["classification"], ["ham", "spam"], fields={"text": "body", "label": "kind"})
qa = {"instruction": "question", "output": "answer"}
print(json.dumps({
    "conversations": load_conversations(source["conversations"]),
    "instructions": load_records(source["instructions"], mapping=qa),
    "preferences": load_pairs(source["preferences"]),
    "classification": [[e.text, e.label] for e in spam],
}))
"""
SOURCES = {
    "conversations": "hf://datasets/me/chats",  # its train split: data/train-*.parquet
    "instructions": "hf://datasets/me/mixed/instructions.csv@v1",
    "preferences": "hf://datasets/me/mixed@v1/pairs.jsonl",
    "classification": "hf://datasets/me/mixed/spam.parquet",
}
EXPECTED = {
    "conversations": [{"messages": CHAT[:1], "instruction": "Name a colour.", "input": "", "output": "Red."}],
    "instructions": [{"instruction": "Add 2 and 2.", "input": "", "output": "4"}],
    "preferences": [
        {
            "messages": CHAT[:1],
            "instruction": "Name a colour.",
            "input": "",
            "chosen": "Red, thanks.",
            "rejected": "Red.",
        }
        | {"output": "Red, thanks."}
    ],
    "classification": [["win a prize now", 1], ["see you at 6", 0]],
}


def parquet(rows: list[dict[str, object]]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def csv_text(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


REPOS = {
    "me/chats": {
        "README.md": b"# chats\n",
        "data/train-00000-of-00001.parquet": parquet([{"messages": CHAT}]),
        "data/test-00000-of-00001.parquet": parquet([{"messages": OTHER}]),
    },
    "me/mixed": {
        "instructions.csv": csv_text([{"question": "Add 2 and 2.", "answer": "4"}]),
        "pairs.jsonl": json.dumps({"prompt": CHAT[:1], "chosen": "Red, thanks.", "rejected": "Red."}).encode()
        + b"\n",
        "spam.parquet": parquet(
            [{"body": "win a prize now", "kind": "spam"}, {"body": "see you at 6", "kind": "ham"}]
        ),
    },
}


def hub_routes() -> dict[str, Reply]:
    """What the Hub answers for REPOS at COMMIT (branch main, tag v1): repo info, the file tree, files."""
    routes = {}
    for repo, files in REPOS.items():
        blobs = {
            name: hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() for name, data in files.items()
        }
        info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": name} for name in files]}
        tree = [
            {"type": "file", "path": name, "oid": blobs[name], "size": len(data)}
            for name, data in files.items()
        ]
        tree_path = f"/api/datasets/{repo}/tree/{COMMIT}?recursive=true&expand=false"
        routes[tree_path] = Reply(200, {}, json.dumps(tree).encode())
        for revision in ("main", "v1", COMMIT):
            routes[f"/api/datasets/{repo}/revision/{revision}"] = Reply(200, {}, json.dumps(info).encode())
            for name, data in files.items():
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{blobs[name]}"'}
                routes[f"/datasets/{repo}/resolve/{revision}/{name}"] = Reply(200, headers, data)
    return routes


def read(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """READ in a fresh interpreter with the Hub cache under `tmp_path`, no token, no proxy, and `env`."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_")) and not k.lower().endswith("_proxy")
    }
    return subprocess.run(
        [sys.executable, "-c", READ, json.dumps(SOURCES)],
        env={**inherited, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_every_kind_reads_hub_datasets_then_reads_them_again_offline(tmp_path: Path) -> None:
    with serving(LoopbackServer()) as hub:
        hub.routes = hub_routes()
        online = read(tmp_path, HF_ENDPOINT=hub.url)
    assert online.returncode == 0, online.stderr[-3000:]
    assert json.loads(online.stdout) == EXPECTED
    fetched = [r.split()[1] for r in hub.requests if r.startswith("GET /datasets/")]
    assert "/datasets/me/chats/resolve/" + COMMIT + "/data/train-00000-of-00001.parquet" in fetched
    assert not any("README" in path for path in fetched)  # data files only

    # The server is gone: the second read comes from the cache alone.
    offline = read(tmp_path, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert json.loads(offline.stdout) == EXPECTED


@pytest.mark.slow
def test_a_dataset_never_read_is_a_user_error_offline(tmp_path: Path) -> None:
    done = read(tmp_path, HF_HUB_OFFLINE="1")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]  # the first source read: classification's
    assert last.startswith(
        "gpt_finetune.errors.UserError: hf://datasets/me/mixed/spam.parquet: cannot read it "
    )
    assert "from the Hugging Face Hub and it is not cached" in last and "pass a local file" in last
