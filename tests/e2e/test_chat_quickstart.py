"""`python train.py experiment=chat-quickstart` as a user runs it: conversation test responses, evaluate.py's
report with the turns, a regeneration from the checkpoint alone, then `chat.py` holding a multi-turn
conversation; and conversations packed on two DDP processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ddp_faults import end_job, train_job

from gpt_finetune.evaluate import evaluate
from gpt_finetune.serving.conversation import prompt_tokens, stop_strings
from gpt_finetune.serving.loading import UsableModel, load_model
from gpt_finetune.serving.streaming import TextStream

ROOT = Path(__file__).resolve().parents[2]
SHORT = (
    "trainer.max_epochs=1",
    "++trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "generate.max_new_tokens=8",
)

# Under `pytest -n 2` these tests run on one worker, so that `chat_run` trains once.
pytestmark = pytest.mark.xdist_group("test_chat_quickstart")


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory, run_train) -> Path:
    run_dir = tmp_path_factory.mktemp("chat-quickstart") / "run"
    done = run_train("experiment=chat-quickstart", *SHORT, f"hydra.run.dir={run_dir}", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_test_responses_answer_the_turns_before_each_last_answer(chat_run: Path) -> None:
    metrics = json.loads((chat_run / "metrics.json").read_text())
    assert metrics["records"] == {"train": 102, "test": 12, "val": 6}  # the 120 bundled conversations
    responses = json.loads((chat_run / "test_responses.json").read_text())
    assert len(responses) == 12
    for record in responses:
        assert record["messages"][-1] == {"role": "user", "content": record["instruction"]}
        assert {"output", "model_response", "stopped"} <= set(record)
    assert any(len(r["messages"]) > 1 for r in responses)  # multi-turn contexts


@pytest.mark.slow
def test_evaluate_reports_the_turns_and_regenerates_from_the_checkpoint(
    chat_run: Path, copy_run, evaluate_config, tmp_path: Path
) -> None:
    run_dir = copy_run(chat_run, tmp_path / "run")
    original = json.loads((run_dir / "test_responses.json").read_text())
    (run_dir / "test_responses.json").unlink()
    evaluate(evaluate_config(f"run_dir={run_dir}", "device=cpu"))
    assert json.loads((run_dir / "test_responses.json").read_text()) == original  # the split, rebuilt
    first = original[0]["messages"]
    shown = "\n".join(f"{m['role']}: {m['content']}" for m in first)
    assert shown.replace("'", "&#x27;") in (run_dir / "report.html").read_text()


def expected_answer(model: UsableModel, messages: list[dict[str, str]], max_new_tokens: int) -> str:
    """What chat.py prints for the last of `messages`: the greedy tokens, up to a next turn's opening."""
    stream = TextStream(stop_strings(model.prompt_style))
    for token in model.gpt.generate(
        [prompt_tokens(messages, model.prompt_style)], max_new_tokens=max_new_tokens
    )[0]:
        stream.feed(token)
    stream.finish()
    return stream.text


@pytest.mark.slow
def test_chat_holds_a_multi_turn_conversation_with_the_run(chat_run: Path) -> None:
    model = load_model(str(chat_run), device="cpu")
    system, first, second = "Be brief.", "Hi, my name is Ana.", "What is my name?"
    turns = [{"role": "system", "content": system}, {"role": "user", "content": first}]
    a1 = expected_answer(model, turns, 12)
    a2 = expected_answer(
        model, [*turns, {"role": "assistant", "content": a1}, {"role": "user", "content": second}], 12
    )
    done = subprocess.run(
        [sys.executable, "chat.py", f"run_dir={chat_run}", f"system={system}", "generate.max_new_tokens=12"],
        cwd=ROOT,
        input=f"{first}\n{second}\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{a1}\n{a2}\n"


@pytest.mark.slow
def test_two_ranks_train_on_packed_conversations(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    job = train_job(  # experiment=quickstart, trainer=ddp_cpu; the bundled conversations instead
        log,
        "data=conversations",
        "data.packing=true",
        "data.pack_length=256",
        "data.batch_size=2",
        "trainer.max_epochs=1",
        "callbacks=none",
        "generate.enabled=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    try:
        code = job.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 2-process run hung: {log.read_text()[-2000:]}")
    finally:
        end_job(job)
    assert code == 0, log.read_text()[-3000:]
    assert "data: packed 102 train records into" in log.read_text()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] > 0 and metrics["records"]["train"] == 102
