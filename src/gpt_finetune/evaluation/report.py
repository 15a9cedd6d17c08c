"""report.html: one self-contained page per run (inline CSS, the loss plot as a data: URI, no scripts)."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

BEFORE_COLUMN = "Before (starting model)"
RECORD_COLUMNS = (
    "#", "Instruction", "Input", "Expected", "Model response",
    "Exact match", "ROUGE-L F1", "Tokens", "Stopped",
)  # fmt: skip
JUDGE_COLUMN = "Judge score"

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; }
#records td { white-space: pre-wrap; vertical-align: top; max-width: 30em; }
#records tr.match td { background: #eefbea; } pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
.muted { color: #777; }
"""


@dataclass
class ReportData:
    """Everything report.html shows; optional parts are left out of the page when None / empty."""

    title: str
    records: Sequence[Mapping[str, Any]]
    scores: Sequence[Mapping[str, Any]]
    summary: Mapping[str, Any]
    loss_png: bytes | None = None
    config_yaml: str | None = None
    train_metrics: Mapping[str, Any] = field(default_factory=dict)
    judge: Mapping[str, Any] | None = None
    notes: Sequence[str] = ()


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value: Any) -> str:
    """A table cell's text: floats to 4 significant digits, booleans as yes/no, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def key_value_table(values: Mapping[str, Any], table_id: str) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td class='num'>{esc(fmt(v))}</td></tr>" for k, v in values.items())
    return f"<table id='{table_id}'>{rows}</table>"


def records_table(data: ReportData) -> str:
    """One row per record: instruction, input, expected, model response and its scores; a DPO run's
    responses of its starting model (`reference_response`) before the model's, when it wrote them."""
    judged = {e["index"]: e for e in (data.judge or {}).get("records", [])}
    columns = (*RECORD_COLUMNS, JUDGE_COLUMN) if data.judge is not None else RECORD_COLUMNS
    before = any("reference_response" in record for record in data.records)
    if before:
        columns = (*columns[:4], BEFORE_COLUMN, *columns[4:])
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    rows = []
    for i, (record, score) in enumerate(zip(data.records, data.scores, strict=True)):
        text = [
            instruction_cell(record),
            record.get("input"),
            record.get("output"),
            *([record.get("reference_response")] if before else []),
            record.get("model_response"),
        ]
        numbers = [score["exact_match"], score["rouge_l_f1"], score["response_tokens"], score["stopped"]]
        if data.judge is not None:
            entry = judged.get(i, {})
            numbers.append(entry.get("score"))
        cells = [f"<td class='num'>{i + 1}</td>"]
        cells += [f"<td>{esc(t)}</td>" for t in text]
        cells += [f"<td class='num'>{esc(fmt(n))}</td>" for n in numbers]
        css = " class='match'" if score["exact_match"] else ""
        rows.append(f"<tr{css}>{''.join(cells)}</tr>")
    return f"<table id='records'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def instruction_cell(record: Mapping[str, Any]) -> Any:
    """The record's instruction, or a conversation's turns before the answer, one `role: text` a line."""
    messages = record.get("messages")
    if not isinstance(messages, list):
        return record.get("instruction")
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages if isinstance(m, dict))


def loss_section(png: bytes | None) -> str:
    if png is None:
        return "<p class='muted'>No loss curves: the run has no TensorBoard train/val loss scalars.</p>"
    data = base64.b64encode(png).decode("ascii")
    return f"<img id='loss-curves' alt='Training and validation loss' src='data:image/png;base64,{data}'>"


def judge_section(judge: Mapping[str, Any] | None) -> str:
    if judge is None:
        return "<p class='muted'>Not judged; run with judge=ollama or judge=openai.</p>"
    settings = {k: v for k, v in judge["judge"].items() if v is not None}
    return f"<p id='judge-summary'>{esc(judge['summary'])}</p>" + key_value_table(settings, "judge-settings")


def render_report(data: ReportData) -> str:
    """The whole HTML page as a string."""
    notes = "".join(f"<p class='muted'>{esc(n)}</p>" for n in data.notes)
    config = "<p class='muted'>The run has no config.yaml.</p>"
    if data.config_yaml is not None:
        config = f"<details open><summary>config.yaml</summary><pre id='config'>{esc(data.config_yaml)}</pre>"
        config += "</details>"
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(data.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(data.title)}</h1>{notes}",
        f"<h2>Loss curves</h2>{loss_section(data.loss_png)}",
        f"<h2>Response metrics</h2>{key_value_table(data.summary, 'summary')}",
        f"<h2>LLM judge</h2>{judge_section(data.judge)}",
        f"<h2>Final training metrics</h2>{key_value_table(data.train_metrics, 'train-metrics')}",
        f"<h2>Test records</h2>{records_table(data)}",
        f"<h2>Resolved config</h2>{config}",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
