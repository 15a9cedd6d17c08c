"""`python make_preferences.py data.path=FILE judge=ollama`: preference pairs for DPO, made by a judge model.

`mode=polite` (the book's): the judge rewrites each expected output more politely or impolitely (a seeded
coin per record); the polite side is chosen. `mode=rank`: two responses sampled from an instruction run
(`run_dir=` / `ckpt_path=`), the judge picks the better. Each finished record is appended to
`<out>.partial.jsonl` at once, so Ctrl-C loses only the requests in flight and the same command resumes;
once every record is done, `out` is written (atomically) and the progress file removed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from gpt_finetune.artifacts import write_json
from gpt_finetune.config import register_resolvers
from gpt_finetune.data.download import is_url
from gpt_finetune.data.instructions import Record, load_records
from gpt_finetune.errors import UserError, run_command
from gpt_finetune.evaluation.judge import Judge
from gpt_finetune.preferences.in_flight import InFlight
from gpt_finetune.preferences.pairs import Entry, Job, Sampling, rank_jobs, rewrite_jobs
from gpt_finetune.preferences.progress import Progress, progress_path
from gpt_finetune.serving.loading import load_model

MODES = ("polite", "rank")


def settings_problems(cfg: DictConfig) -> list[str]:
    """Every problem with the command's keys, each naming the key and the fix."""
    problems = []
    if cfg.mode not in MODES:
        problems.append(f"mode={cfg.mode} is not one of {', '.join(MODES)}")
    if cfg.data.path is None:
        problems.append("data.path is not set; pass data.path=instruction-data.json (a JSON or JSONL file)")
    if cfg.limit is not None and cfg.limit < 1:
        problems.append(f"limit={cfg.limit}: use a positive number of records, or null for all")
    if cfg.judge.get("_target_") is None:
        problems.append("there is no judge (judge=none); pass judge=ollama or judge=openai")
    source = cfg.run_dir is not None or cfg.ckpt_path is not None
    if cfg.mode == "polite" and source:
        problems.append("run_dir / ckpt_path are for mode=rank; leave them out, or pass mode=rank")
    if cfg.mode == "rank":
        g = cfg.generate
        if not source:
            problems.append("mode=rank samples a run's responses; pass run_dir=RUN or ckpt_path=FILE.ckpt")
        if g.temperature <= 0:
            problems.append(f"generate.temperature={g.temperature}: rank mode samples, use a temperature > 0")
        if g.max_new_tokens < 1 or g.batch_size < 1:
            problems.append("generate.max_new_tokens and generate.batch_size must be positive")
        if g.top_k is not None and g.top_k < 1:
            problems.append(f"generate.top_k={g.top_k}: use a positive integer or null")
    return problems


def output_path(out: str | None, source: str) -> Path:
    """`out`, or `<input stem>-with-preference.json` beside the input (in the current folder for a URL or
    a data file bundled with the package)."""
    if out is not None:
        return Path(out).expanduser()
    if is_url(source):
        return Path(f"{Path(urlsplit(source).path).stem}-with-preference.json")
    path = Path(source).expanduser()
    name = f"{path.stem}-with-preference.json"
    bundled = Path(str(resources.files("gpt_finetune.data"))).resolve()
    return Path(name) if path.resolve().parent == bundled else path.with_name(name)


def records_digest(records: Sequence[Record]) -> str:
    """A short hash of the records' content: a progress file is resumed only for the same input."""
    text = json.dumps(records, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mode_jobs(
    cfg: DictConfig, judge: Judge, records: Sequence[Record]
) -> tuple[dict[str, Any], Callable[[Sequence[int]], Iterator[Job]]]:
    """The mode's part of the progress header, and its jobs for the pending records (rank: loads the run)."""
    if cfg.mode == "polite":
        return {}, lambda pending: rewrite_jobs(judge, records, pending, cfg.seed)
    model = load_model(
        cfg.run_dir,
        cfg.ckpt_path,
        prompt_style=cfg.prompt_style,
        device=cfg.device,
        base_weights=cfg.base_weights,
    )
    if model.kind != "instruct":
        raise UserError(f"{model.source}: a classification run; mode=rank needs an instruction run")
    g = cfg.generate
    sampling = Sampling(g.max_new_tokens, g.temperature, g.top_k, g.batch_size)
    if sampling.max_new_tokens >= model.gpt.config.context_length:
        raise UserError(
            f"generate.max_new_tokens={sampling.max_new_tokens} leaves no room for the prompt in the "
            f"model's {model.gpt.config.context_length}-token context; lower it"
        )
    header = {
        "model": str(model.checkpoint.resolve()) if model.checkpoint is not None else model.source,
        "prompt_style": model.prompt_style,
        "generate": {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_k": g.top_k},
    }
    return header, lambda pending: rank_jobs(judge, model, records, pending, sampling, cfg.seed)


def make_preferences(cfg: DictConfig) -> dict[str, Any]:
    """Make (or resume making) the pairs `cfg` describes; the summary: counts, and `out` once complete."""
    problems = settings_problems(cfg)
    if problems:
        raise UserError("; ".join(problems))
    every = load_records(cfg.data.path, cfg.data.cache_dir, mapping=cfg.data.get("fields"))
    records = every[: cfg.limit] if cfg.limit is not None else every
    out = output_path(cfg.out, str(cfg.data.path))
    source = str(cfg.data.path)
    if not is_url(source) and out.resolve() == Path(source).expanduser().resolve():
        raise UserError(
            f"out={out} is the input data.path; the pairs go to another file: pass out=OTHER.json"
        )
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out} exists; pass overwrite=true to replace it, or out=OTHER.json")
    judge: Judge = instantiate(cfg.judge, _partial_=True)()  # a UserError reaches the user unwrapped
    header, jobs = mode_jobs(cfg, judge, records)
    asked = {key: judge.settings[key] for key in ("protocol", "model", "url")}  # pairs of one judge per file
    progress = Progress.open(
        progress_path(out),
        {"input": records_digest(every), "mode": cfg.mode, "seed": cfg.seed, "judge": asked, **header},
    )
    pending = [i for i in range(len(records)) if i not in progress.done]
    already = len(records) - len(pending)
    run_jobs(jobs(pending), progress, judge.concurrency, len(records), already)
    entries = [progress.done[i] for i in range(len(records))]
    pairs = [e["pair"] for e in entries if "pair" in e]
    write_json(out, pairs)
    progress.close(remove=True)
    summary = summarize(entries, already, out)
    print(summary["summary"], flush=True)
    return summary


def run_jobs(jobs: Iterator[Job], progress: Progress, concurrency: int, total: int, already: int) -> None:
    """Run the jobs `concurrency` at a time, each entry into the progress file as it finishes. Ctrl-C or a
    failure keeps the finished ones there (the file goes when there are none) and says how to resume."""
    bar = tqdm(total=total, initial=already, desc="pairs", unit="record", dynamic_ncols=True)

    def finish(job: Job) -> None:
        progress.add(job())
        bar.update()

    pool = InFlight(concurrency)
    try:
        for job in jobs:
            pool.submit(partial(finish, job))
        pool.wait()
    except KeyboardInterrupt:
        bar.close()
        print(
            f"interrupted: {stop(progress, total) or 'no record was finished'}", file=sys.stderr, flush=True
        )
        raise
    except UserError as error:
        bar.close()
        resume = stop(progress, total)
        raise UserError(f"{error}; then {resume}" if resume else str(error)) from None
    finally:
        bar.close()


def stop(progress: Progress, total: int) -> str | None:
    """Close the progress file (replies still in flight are dropped; an empty file is removed), and say
    how to resume, or None when no record was finished."""
    progress.close(remove=not progress.done)
    if not progress.done:
        return None
    done = len(progress.done)
    return f"rerun the same command to resume ({done} of {total} records done, kept in {progress.path})"


def summarize(entries: Sequence[Entry], already: int, out: Path) -> dict[str, Any]:
    """Counts of pairs written and records left out (by reason), and the one line that says them."""
    reasons = Counter(e["left_out"] for e in entries if "left_out" in e)
    written = len(entries) - sum(reasons.values())
    line = f"wrote {written} pairs to {out}"
    if reasons:
        details = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
        line += f"; left out {sum(reasons.values())} ({details})"
    line += f"; {already} of {len(entries)} were done before this run" if already else ""
    return {
        "out": str(out),
        "written": written,
        "left_out": dict(reasons),
        "already": already,
        "summary": line,
    }


def main(cfg: DictConfig) -> dict[str, Any]:
    """Entry point for `make_preferences.py`: user errors as one line on stderr and exit code 2; Ctrl-C
    exits 130 without a traceback, the finished records kept for the rerun."""
    register_resolvers()
    try:
        return run_command(make_preferences, cfg)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
