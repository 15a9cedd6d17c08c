"""lm-evaluation-harness, unmodified, evaluates a served run over HTTP: `local-completions` with the
server's own tokenizer (`tokenizer_backend=remote`) scores a multiple-choice task exactly as the in-process
adapter does, and a `generate_until` task runs through `local-chat-completions`. No tokenizer is downloaded
(the Hub is offline for the harness)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval import utils as lm_eval_utils  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from gpt_finetune.evaluation.lm_eval_adapter import GPTFinetuneLM  # noqa: E402
from gpt_finetune.serving.conversation import render_messages  # noqa: E402
from gpt_finetune.serving.loading import UsableModel, load_model  # noqa: E402
from gpt_finetune.serving.server import ServerSettings, background_server, create_app  # noqa: E402
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not hasattr(lm_eval_utils, "RemoteTokenizer"),
        reason="tokenizer_backend=remote needs lm-eval >= 0.4.9.2",
    ),
]
ROWS = [
    {"question": "What colour is the sky on a clear day?", "choices": ["blue", "green", "red"], "answer": 0},
    {"question": "How many legs does a cat have?", "choices": ["two", "four", "six"], "answer": 1},
    {"question": "Which is a fruit?", "choices": ["carrot", "potato", "apple"], "answer": 2},
    {"question": "Which animal barks?", "choices": ["cat", "dog", "fish"], "answer": 1},
]
COMMON = """dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
"""
MULTIPLE_CHOICE = """task: http_mc
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
"""
GENERATION = """task: http_gen
output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{choices[answer]}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("http-tasks")
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common = COMMON.format(data=folder / "rows.jsonl", cache=folder / "hf-cache")
    (folder / "http_mc.yaml").write_text(MULTIPLE_CHOICE + common)
    (folder / "http_gen.yaml").write_text(GENERATION + common)
    return folder


@pytest.fixture(scope="module")
def served(quickstart_run: Path) -> Iterator[tuple[UsableModel, str]]:
    """The quickstart run behind `serve.py`'s app on loopback: (the model, the server's URL)."""
    usable = load_model(str(quickstart_run), device="cpu")
    with background_server(create_app(usable, ServerSettings())) as url:
        yield usable, url


def harness(task_dir: Path, model: str, model_args: str, task: str, *extra: str) -> list[dict]:
    """`lm_eval` as a user runs it (its own command, offline): the task's logged samples by doc_id."""
    out = task_dir / f"out-{model}"
    command = [
        str(Path(sys.executable).parent / "lm_eval"), "--model", model, "--model_args", model_args,
        "--tasks", task, "--include_path", str(task_dir), "--output_path", str(out), "--log_samples", *extra,
    ]  # fmt: skip
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    [logged] = list(out.rglob(f"samples_{task}_*.jsonl"))
    return sorted(map(json.loads, logged.read_text().splitlines()), key=lambda s: s["doc_id"])


def test_local_completions_scores_choices_as_the_in_process_adapter(
    served: tuple[UsableModel, str], task_dir: Path, quickstart_run: Path
) -> None:
    usable, url = served
    args = f"model={usable.name},base_url={url}/v1/completions,tokenizer_backend=remote,max_length=1024"
    over_http = harness(task_dir, "local-completions", args, "http_mc")
    adapter = GPTFinetuneLM(run_dir=str(quickstart_run), device="cpu", batch_size=4)
    local = lm_eval.simple_evaluate(
        model=adapter,
        tasks=["http_mc"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    in_process = sorted(local["samples"]["http_mc"], key=lambda s: s["doc_id"])
    assert len(over_http) == len(in_process) == len(ROWS)
    for remote, here in zip(over_http, in_process, strict=True):
        remote_scores = [float(r[0]) for r in remote["filtered_resps"]]
        assert remote_scores == pytest.approx([float(r[0]) for r in here["filtered_resps"]], abs=1e-4)
        assert remote["acc"] == here["acc"]


def test_local_chat_completions_runs_a_generate_until_task(
    served: tuple[UsableModel, str], task_dir: Path
) -> None:
    usable, url = served
    args = f"model={usable.name},base_url={url}/v1/chat/completions"
    samples = harness(task_dir, "local-chat-completions", args, "http_gen", "--apply_chat_template")
    tokenizer = gpt2_tokenizer()
    for sample, row in zip(samples, ROWS, strict=True):
        prompt = render_messages([{"role": "user", "content": row["question"]}], usable.prompt_style)
        tokens = usable.gpt.generate([tokenizer.encode(prompt)], max_new_tokens=8)[0]
        expected = tokenizer.decode([t for t in tokens if t != END_OF_TEXT]).split("\n")[0]
        assert sample["resps"][0][0] == expected  # the server's greedy answer, cut at the task's "\n"
