"""`export(cfg)`: a run (or base model) as a Hugging Face directory or a GGUF file with an ollama Modelfile.

`out` is written whole or not at all: everything is built in a temporary folder beside it, which is then
renamed to `out`. An `out` that holds files is refused unless `overwrite=true`, which replaces it entirely,
and never when it would delete the user's work (`export/overwrite.py`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from omegaconf import DictConfig

from gpt_finetune.artifacts import write_text
from gpt_finetune.config import register_resolvers
from gpt_finetune.errors import UserError, run_command
from gpt_finetune.export.gguf_file import GgufDtype, check_gguf_exportable, write_gguf
from gpt_finetune.export.hf import HfDtype, check_exportable, write_hf
from gpt_finetune.export.modelfile import GGUF_NAME, modelfile, ollama_commands
from gpt_finetune.export.overwrite import check_overwrite
from gpt_finetune.export.peft_adapter import ADAPTER_DIR, write_peft_adapter
from gpt_finetune.serving.loading import UsableModel, load_configured

FORMATS: dict[str, tuple[str, ...]] = {
    "hf": ("f32", "f16", "bf16"),
    "gguf": ("f16", "f32", "q8_0"),
}  # default first


def main(cfg: DictConfig) -> Path:
    """Entry point for `export.py`: `export`, with user errors as one line on stderr and exit code 2."""
    register_resolvers()
    return run_command(export, cfg)


def export(cfg: DictConfig) -> Path:
    """Write `cfg.out` in `cfg.format` (and upload it with `push_to_hub`); return the directory."""
    fmt, dtype, out = check_settings(cfg)
    merge = bool(cfg.merge)
    usable = load_configured(cfg, device="cpu", merge=merge)
    (check_exportable if fmt == "hf" else check_gguf_exportable)(usable)
    if not merge:
        check_adapters_exportable(usable)
    with built_directory(out) as folder:
        if fmt == "hf":
            location = cfg.push_to_hub or str(out)
            write_hf(usable, folder, cast(HfDtype, dtype), location=location)
            if not merge:
                write_peft_adapter(usable, folder / ADAPTER_DIR, base_model=location)
        else:
            logging.getLogger("gguf").setLevel(logging.WARNING)  # its INFO lines name the temporary folder
            write_gguf(usable, folder / GGUF_NAME, cast(GgufDtype, dtype))
            write_text(folder / "Modelfile", modelfile(usable.prompt_style, usable.gpt.config.context_length))
    report(usable, fmt, dtype, out)
    if cfg.push_to_hub is not None:
        push(out, cfg.push_to_hub, cfg.private)
    return out


def check_settings(cfg: DictConfig) -> tuple[str, str, Path]:
    """(format, dtype, out) once the settings are valid; all problems at once in one line, before any load."""
    problems = []
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        problems.append(f"format={fmt} is not one of {', '.join(FORMATS)}")
    dtypes = FORMATS.get(fmt, ())
    dtype = str(cfg.dtype) if cfg.dtype is not None else (dtypes[0] if dtypes else "")
    if dtypes and dtype not in dtypes:
        problems.append(f"dtype={dtype} is not one of {' | '.join(dtypes)} for format={fmt}")
    if not cfg.merge and fmt != "hf":
        problems.append("merge=false writes PEFT adapters beside a format=hf export; set format=hf")
    if cfg.push_to_hub is not None and fmt != "hf":
        problems.append("push_to_hub uploads format=hf directories only; drop push_to_hub or set format=hf")
    if cfg.push_to_hub is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", str(cfg.push_to_hub)):
        problems.append(f"push_to_hub={cfg.push_to_hub} is not a Hub repo id; use push_to_hub=user/name")
    out = Path(str(cfg.out)).expanduser().absolute() if cfg.out is not None else None
    if out is None:
        problems.append("out is required: the directory to write (out=DIR)")
    elif out.exists() and not out.is_dir():
        problems.append(f"out={cfg.out} is a file; give a directory to write")
    elif out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        problems.append(f"out={cfg.out} holds files; choose an empty or new directory, or set overwrite=true")
    if problems:
        raise UserError("; ".join(problems))
    assert out is not None
    if out.is_dir() and any(out.iterdir()):
        check_overwrite(cfg, out)
    return fmt, dtype, out


@contextmanager
def built_directory(out: Path) -> Iterator[Path]:
    """Yield an empty folder beside `out`; on success it replaces `out`, on error it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield folder
        for path in [folder, *folder.rglob("*")]:  # mkdtemp and atomic writes make private files
            path.chmod(0o755 if path.is_dir() else 0o644)  # an export is meant to be shared
        old = out.parent / f"{folder.name}.old"
        if out.exists():
            os.replace(out, old)  # the old `out` (empty, or overwrite=true) leaves in one rename
        try:
            os.replace(folder, out)
        except BaseException:
            if old.exists():
                os.replace(old, out)  # the previous export back where it was
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def check_adapters_exportable(usable: UsableModel) -> None:
    """`merge=false` needs a LoRA instruction run: its adapters become a PEFT adapter directory."""
    if usable.lora.get("r") is None:
        raise UserError("merge=false exports LoRA adapters, and this run has none (task.lora.r was null)")
    if usable.kind == "classify":
        raise UserError(
            "merge=false exports instruction runs' adapters; export a classification run merged (merge=true)"
        )


def report(usable: UsableModel, fmt: str, dtype: str, out: Path) -> None:
    """Print what was written and, for GGUF, the two lines that run it with ollama."""
    files = [p for p in sorted(out.rglob("*")) if p.is_file()]
    sizes = ", ".join(f"{p.relative_to(out)} {p.stat().st_size / 1e6:.1f} MB" for p in files)
    print(f"wrote {out} ({fmt}, {dtype}): {sizes}")
    if fmt == "gguf":
        print("run it with ollama:")
        for line in ollama_commands(ollama_name(usable.name), out):
            print(f"  {line}")


def ollama_name(name: str) -> str:
    """`name` as an ollama model name: lower case letters, digits, `.`, `_` and `-`."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "gpt-finetune"


def push(out: Path, repo_id: str, private: bool) -> None:
    """Upload the directory `out` to the Hub repo `repo_id` (created if missing); token from HF_TOKEN."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=out, commit_message="Upload from export.py")
    except Exception as error:  # no token, no network, HTTP errors: the export itself is done
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise UserError(
            f"wrote {out} but could not upload it to {repo_id} ({reason}); set HF_TOKEN (or hf auth "
            "login) and export again with overwrite=true"
        ) from None
    print(f"pushed {out} to {url} ({commit.oid})")
