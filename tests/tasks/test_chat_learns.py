"""End to end: `train.py experiment=chat-quickstart data.path=FILE` on multi-turn conversations whose answer
is only in the system message or an earlier user turn; the tiny model then answers held-out conversations
through serve.py's chat completions.

The answer is a word told earlier (a password in the system message, or "my word" in the first user turn,
beside a name that is not the answer): a 2-layer model learns to find and copy it (an induction head), so a
miss points at the pipeline: training must render conversations as the server does, learn each assistant
turn and its end-of-text, and the server must stop there.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pytest
from word_lists import WORDS

from gpt_finetune.evaluation.metrics import exact_match
from gpt_finetune.serving.loading import load_model
from gpt_finetune.serving.server import ServerSettings, background_server, create_app

NAMES = ("Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas")
NAMES += ("Kira", "Liam", "Maya", "Noah", "Olga", "Pedro", "Rosa", "Sam", "Tara", "Yusuf")


def conversation(word: str, name: str, in_system: bool) -> list[dict[str, str]]:
    if in_system:
        return [
            {"role": "system", "content": f"The password is {word}."},
            {"role": "user", "content": f"Hi, I am {name}."},
            {"role": "assistant", "content": f"Hello, {name}."},
            {"role": "user", "content": "What is the password?"},
            {"role": "assistant", "content": word},
        ]
    return [
        {"role": "user", "content": f"I am {name}. My word is {word}."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "What is my word?"},
        {"role": "assistant", "content": word},
    ]


def write_chats(path: Path, n: int, seed: int) -> Path:
    """`n` different conversations (of 800: 20 words x 20 names x system message or user turn)."""
    combos = [(w, name, s) for w in WORDS for name in NAMES for s in (True, False)]
    random.Random(seed).shuffle(combos)
    lines = [json.dumps({"messages": conversation(*combo)}) + "\n" for combo in combos[:n]]
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.mark.slow
def test_a_tiny_model_answers_from_earlier_turns_through_the_server(tmp_path: Path, run_train) -> None:
    run_dir = tmp_path / "run"
    done = run_train(
        "experiment=chat-quickstart",
        f"data.path={write_chats(tmp_path / 'chats.jsonl', 600, seed=0)}",
        "data.style=phi3",  # half the chatml tokens per turn
        "data.train_fraction=0.8",  # 480 train / 90 test / 30 validation conversations
        "data.test_fraction=0.15",
        "data.batch_size=16",
        "data.max_length=128",
        "model.context_length=128",
        "optimizer.lr=2.0e-3",
        "optimizer.warmup_steps=20",
        "optimizer.weight_decay=0.0",
        "trainer.max_epochs=10",  # 300 steps; exact match jumps from ~0 to 1 at about 200-250 of them
        "trainer.gradient_clip_val=1.0",
        "generate.max_new_tokens=4",
        "callbacks.validation_samples=null",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        env={"OMP_NUM_THREADS": "1"},  # a 64-wide model: one thread is as fast, and far faster on a busy CPU
    )
    assert done.returncode == 0, done.stderr[-3000:]
    held_out = json.loads((run_dir / "test_responses.json").read_text(encoding="utf-8"))
    assert len(held_out) == 90
    for record in held_out:  # the answer is in an earlier turn or the system message, never the question
        assert record["output"] not in record["messages"][-1]["content"]
        assert any(record["output"] in m["content"] for m in record["messages"][:-1])

    usable = load_model(str(run_dir), device="cpu")
    answers = []
    with background_server(create_app(usable, ServerSettings())) as url, httpx.Client(timeout=60) as client:
        for record in held_out:
            body = {"messages": record["messages"], "max_tokens": 4, "temperature": 0}
            reply = client.post(f"{url}/v1/chat/completions", json=body).json()
            answers.append(reply["choices"][0])
    matches = [
        exact_match(a["message"]["content"], r["output"]) for a, r in zip(answers, held_out, strict=True)
    ]
    assert sum(matches) / len(matches) >= 0.8
    assert sum(a["finish_reason"] == "stop" for a in answers) / len(answers) >= 0.8  # it ends its turn
