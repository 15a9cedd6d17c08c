"""The lm-evaluation-harness adapter: a local multiple-choice task end to end, and its numbers by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from gpt_finetune.data.prompts import format_prompt  # noqa: E402
from gpt_finetune.evaluation.lm_eval_adapter import GPTFinetuneLM  # noqa: E402
from gpt_finetune.model import GPT, GPTConfig  # noqa: E402
from gpt_finetune.tokenizer import gpt2_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

QUESTIONS = [
    ("What colour is the sky on a clear day?", ["blue", "green", "red"], 0),
    ("How many legs does a cat have?", ["two", "four", "six"], 1),
    ("Which is a fruit?", ["carrot", "potato", "apple"], 2),
    ("What is 2 + 2?", ["4", "5", "22"], 0),
    ("Which animal barks?", ["cat", "dog", "fish"], 1),
]
TASK_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_size("tiny", context_length=64)).eval()


KNOWN_RIGHT = 3  # questions whose answer is the tiny model's own top choice: its accuracy is exactly 3/5


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: GPT) -> Path:
    """A task YAML and its JSONL data set, both local; the answers make `tiny_model` score exactly 3 of 5."""
    folder = tmp_path_factory.mktemp("tasks")
    rows = []
    scored = zip(QUESTIONS, choice_scores(tiny_model), strict=True)
    for i, ((question, choices, _), scores) in enumerate(scored):
        top = scores.index(max(scores))
        answer = top if i < KNOWN_RIGHT else (top + 1) % len(choices)
        rows.append({"question": question, "choices": choices, "answer": answer})
    (folder / "tiny_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml = TASK_YAML.format(data=folder / "tiny_mc.jsonl", cache=folder / "hf-cache")
    (folder / "tiny_mc.yaml").write_text(yaml)
    return folder


def direct_loglikelihood(model: GPT, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log p(continuation token | everything before it), with one plain forward pass."""
    tokenizer = gpt2_tokenizer()
    context_ids, whole = tokenizer.encode(context), tokenizer.encode(context + continuation)
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([whole[:-1]]))[0], dim=-1)
    targets = whole[len(context_ids) :]
    picked = logprobs[len(context_ids) - 1 :]
    total = sum(picked[i, t].item() for i, t in enumerate(targets))
    return total, all(picked[i].argmax().item() == t for i, t in enumerate(targets))


def choice_scores(model: GPT) -> list[list[float]]:
    """Each question's per-choice log-likelihood under `model`, computed directly (the task's prompt)."""
    return [
        [direct_loglikelihood(model, f"Question: {question}\nAnswer:", f" {c}")[0] for c in choices]
        for question, choices, _ in QUESTIONS
    ]


def check_samples(samples: list[dict], model: GPT, answers: list[int]) -> float:
    """Every logged choice's log-likelihood equals the direct one; the share of questions the model gets."""
    assert [s["doc_id"] for s in samples] == list(range(len(QUESTIONS)))
    right = []
    for sample, scores, answer in zip(samples, choice_scores(model), answers, strict=True):
        assert [float(r[0]) for r in sample["filtered_resps"]] == pytest.approx(scores, rel=1e-4)
        right.append(scores.index(max(scores)) == answer)
        assert sample["acc"] == float(right[-1])
    return sum(right) / len(right)


def task_answers(task_dir: Path) -> list[int]:
    return [json.loads(line)["answer"] for line in (task_dir / "tiny_mc.jsonl").read_text().splitlines()]


def test_registered_under_its_name() -> None:
    assert get_model("gpt-finetune") is GPTFinetuneLM


def test_multiple_choice_task_runs_end_to_end(tiny_model: GPT, task_dir: Path) -> None:
    adapter = GPTFinetuneLM(model=tiny_model, batch_size=4, device="cpu")
    results = lm_eval.simple_evaluate(
        model=adapter,
        tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    accuracy = results["results"]["tiny_mc"]["acc,none"]
    assert accuracy == KNOWN_RIGHT / len(QUESTIONS)  # the answers were chosen for exactly this
    assert results["n-samples"]["tiny_mc"]["effective"] == len(QUESTIONS)
    samples = sorted(results["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    assert check_samples(samples, tiny_model, task_answers(task_dir)) == accuracy


def test_loglikelihood_matches_a_direct_computation(tiny_model: GPT) -> None:
    adapter = GPTFinetuneLM(model=tiny_model, batch_size=3, device="cpu")
    pairs = [
        ("Question: What is 2 + 2?\nAnswer:", " 4"),
        ("The cat sat on the", " mat today"),
        ("Hi ", "you"),
    ]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    got = adapter.loglikelihood(requests, disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(pairs, got, strict=True):
        # lm_eval moves a context's trailing spaces onto the continuation ("Hi", " you").
        trimmed = context.rstrip()
        direct = direct_loglikelihood(tiny_model, trimmed, context[len(trimmed) :] + continuation)
        expected, expected_greedy = direct
        assert logprob == pytest.approx(expected, rel=1e-4)
        assert greedy == expected_greedy
    one_by_one = GPTFinetuneLM(model=tiny_model, batch_size=1, device="cpu").loglikelihood(requests, True)
    assert [x for x, _ in one_by_one] == pytest.approx([x for x, _ in got], rel=1e-4)  # padding is harmless


def test_rolling_loglikelihood_covers_every_token_in_windows(tiny_model: GPT) -> None:
    adapter = GPTFinetuneLM(model=tiny_model, batch_size=2, device="cpu")
    text = " ".join(f"word{i}" for i in range(60))  # ~120 tokens: two windows of a 64-token context
    tokens = gpt2_tokenizer().encode(text)
    assert len(tokens) > 64
    [got] = adapter.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], True)
    expected, context = 0.0, 64
    with torch.no_grad():
        # Each window predicts the next (up to) 64 tokens from a full 64-token input ending just before its
        # last target; the first starts with end-of-text instead.
        for start in range(0, len(tokens), context):
            end = min(start + context, len(tokens))
            inputs = [50256, *tokens[: end - 1]] if start == 0 else tokens[end - context - 1 : end - 1]
            logprobs = F.log_softmax(tiny_model(torch.tensor([inputs]))[0], dim=-1)[-(end - start) :]
            expected += sum(logprobs[i, t].item() for i, t in enumerate(tokens[start:end]))
    assert got == pytest.approx(expected, rel=1e-4)
    short = "A short text."
    [rolled] = adapter.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (short,), 0)], True)
    [(scored, _)] = adapter.loglikelihood([Instance("loglikelihood", {}, ("", short), 0)], True)
    assert rolled == pytest.approx(scored, rel=1e-5)


def test_generate_until_is_greedy_and_stops_at_the_stop_string(tiny_model: GPT) -> None:
    adapter = GPTFinetuneLM(model=tiny_model, batch_size=2, device="cpu")
    contexts = ["Once upon a time", "The answer is"]
    settings = {"until": ["the"], "max_gen_toks": 6, "do_sample": False}
    requests = [Instance("generate_until", {}, (c, settings), i) for i, c in enumerate(contexts)]
    got = adapter.generate_until(requests, disable_tqdm=True)
    tokenizer = gpt2_tokenizer()
    for context, text in zip(contexts, got, strict=True):
        new = tiny_model.generate([tokenizer.encode(context)], max_new_tokens=6)[0]
        assert text == tokenizer.decode([t for t in new if t != 50256]).split("the")[0]


def test_chat_template_uses_the_prompt_style(tiny_model: GPT) -> None:
    adapter = GPTFinetuneLM(model=tiny_model, prompt_style="alpaca", device="cpu")
    turn = [{"role": "user", "content": "Name a colour."}]
    assert adapter.apply_chat_template(turn) == format_prompt({"instruction": "Name a colour.", "input": ""})


@pytest.mark.slow
def test_loads_a_run_dir_and_runs_from_the_command_line(quickstart_run: Path, task_dir: Path) -> None:
    adapter = GPTFinetuneLM(run_dir=str(quickstart_run), device="cpu")
    state = torch.load(quickstart_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert adapter.prompt_style == "alpaca"
    assert adapter.model.transformer.wte.weight.shape == state["model.transformer.wte.weight"].shape
    command = [
        sys.executable, "-m", "gpt_finetune.evaluation.lm_eval_cli", "--model", "gpt-finetune",
        "--model_args", f"run_dir={quickstart_run}", "--tasks", "tiny_mc", "--include_path", str(task_dir),
        "--output_path", str(task_dir / "results"), "--log_samples",
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    [results] = list((task_dir / "results").rglob("results_*.json"))
    accuracy = json.loads(results.read_text())["results"]["tiny_mc"]["acc,none"]
    # The run's fine-tuned model, loaded in-process, scores every choice as the command line did.
    [logged] = list((task_dir / "results").rglob("samples_tiny_mc_*.jsonl"))
    samples = sorted(map(json.loads, logged.read_text().splitlines()), key=lambda s: s["doc_id"])
    assert check_samples(samples, adapter.model, task_answers(task_dir)) == pytest.approx(accuracy)
