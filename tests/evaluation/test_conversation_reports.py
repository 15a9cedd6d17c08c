"""A conversation's test response is scored, reported and judged like an instruction's: the report shows
the turns before the answer, the judge reads them as the model did."""

from __future__ import annotations

import html

from gpt_finetune.data.conversation_prompts import render_messages
from gpt_finetune.evaluation.judge import judge_prompt
from gpt_finetune.evaluation.metrics import score_record
from gpt_finetune.evaluation.report import ReportData, render_report

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "My word is <moon>."},
    {"role": "assistant", "content": "Noted."},
    {"role": "user", "content": "What was my word?"},
]
RECORD = {
    "messages": MESSAGES,
    "instruction": "What was my word?",
    "input": "",
    "output": "<moon>",
    "model_response": "<moon>",
    "stopped": True,
}


def test_the_report_shows_the_turns_before_the_answer() -> None:
    score = score_record(RECORD)
    assert score["exact_match"] == 1.0
    page = render_report(ReportData("run", [RECORD], [score], {"exact_match": 1.0}))
    turns = "system: Be brief.\nuser: My word is <moon>.\nassistant: Noted.\nuser: What was my word?"
    assert f"<td>{html.escape(turns)}</td>" in page


def test_the_judge_reads_the_conversation_as_the_model_did() -> None:
    prompt = judge_prompt(RECORD, "phi3")
    assert (
        f"Given the input `{render_messages(MESSAGES, 'phi3').rstrip()}` and correct output `<moon>`"
        in prompt
    )
