"""`python export.py`: what each format writes for a trained run, one-line refusals with exit code 2 and
nothing half-written, overwrite, and push_to_hub to a loopback imitation of the Hub."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from email.message import Message
from pathlib import Path

import pytest
import torch
import yaml
from loopback_hub import LoopbackServer, Reply, serving
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM

from gpt_finetune.export.command import built_directory, export, main
from gpt_finetune.serving.loading import load_model

ROOT = Path(__file__).resolve().parents[2]
Train = Callable[..., subprocess.CompletedProcess]
Compose = Callable[..., DictConfig]
HF_FILES = [
    "README.md",
    "config.json",
    "generation_config.json",
    "merges.txt",
    "model.safetensors",
    "tokenizer_config.json",
    "vocab.json",
]


def leftovers(folder: Path) -> list[str]:
    """Temporary folders an export left beside its output."""
    return sorted(
        p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old"))
    )


def test_hf_export_of_a_run_writes_the_directory_and_a_model_card(
    quickstart_run: Path, export_config: Compose, tmp_path: Path
) -> None:
    out = export(export_config(f"run_dir={quickstart_run}", f"out={tmp_path / 'hf'}"))
    assert sorted(p.name for p in out.iterdir()) == HF_FILES
    assert leftovers(tmp_path) == []
    assert all(
        p.stat().st_mode & 0o044 == 0o044 for p in out.iterdir()
    )  # readable by others: a shareable export
    usable = load_model(str(quickstart_run), device="cpu")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[50, 100, 2000, 13, 198]])
    with torch.no_grad():
        assert (model(ids).logits - usable.gpt(ids)).abs().max() <= 1e-4
    card = (out / "README.md").read_text()
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    for expected in (
        "none (random init, size tiny)",
        "instruction tuning (alpaca)",
        "sample_instructions.json",
        "| learning rate | 0.003 |",
        f"| epochs | {metrics['epochs']} ({metrics['global_step']} steps) |",
        "| precision | 32-true |",
        f"| test/loss | {metrics['test/loss']:.4g} |",
        'AutoModelForCausalLM.from_pretrained("hf")',
        "exported by gpt-finetune's `export.py` from `checkpoints/best-",
    ):
        assert expected in card, expected
    # Published with push_to_hub: no absolute local path (the export, the run, the package's data, home).
    for local in (tmp_path, quickstart_run, ROOT, Path(sys.prefix), Path.home()):
        assert str(local) not in card, local


def test_gguf_export_of_a_run_writes_the_file_and_modelfile_and_prints_how_to_run_it(
    quickstart_run: Path, export_config: Compose, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = export(export_config(f"run_dir={quickstart_run}", f"out={tmp_path / 'gguf'}", "format=gguf"))
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.gguf"]
    printed = capsys.readouterr().out.splitlines()
    assert any("(gguf, f16)" in line for line in printed)
    assert printed[-2:] == [f"  ollama create run -f {out / 'Modelfile'}", "  ollama run run"]


BAD_SETTINGS = {
    "no out": ((), "out is required"),
    "unknown format": (("format=onnx", "out=OUT"), "format=onnx is not one of hf, gguf"),
    "bad hf dtype": (("dtype=q8_0", "out=OUT"), "dtype=q8_0 is not one of f32 | f16 | bf16 for format=hf"),
    "bad gguf dtype": (("format=gguf", "dtype=bf16", "out=OUT"), "dtype=bf16 is not one of f16 | f32 | q8_0"),
    "push a gguf": (("format=gguf", "push_to_hub=me/model", "out=OUT"), "push_to_hub uploads format=hf"),
    "bad repo id": (("push_to_hub=no-slash", "out=OUT"), "push_to_hub=no-slash is not a Hub repo id"),
    "out holds files": (
        ("out=FULL",),
        "holds files; choose an empty or new directory, or set overwrite=true",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_fail_in_one_line_with_exit_code_2_and_write_nothing(
    quickstart_run: Path,
    export_config: Compose,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    overrides, message = BAD_SETTINGS[case]
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    paths = {"OUT": str(tmp_path / "out"), "FULL": str(full)}
    overrides = tuple(
        o.replace("=OUT", f"={paths['OUT']}").replace("=FULL", f"={paths['FULL']}") for o in overrides
    )
    with pytest.raises(SystemExit) as exited:
        main(export_config(f"run_dir={quickstart_run}", *overrides))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no out, no temporary folder
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and (full / "keep.txt").read_text() == "mine"


def test_classifier_to_gguf_is_refused_after_loading_and_writes_nothing(
    classify_run: Path, export_config: Compose, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(export_config(f"run_dir={classify_run}", "format=gguf", f"out={tmp_path / 'out'}"))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no class head; export this classifier with format=hf" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_without_out_exits_2_with_one_line(run_train: Train, tmp_path: Path) -> None:
    done = run_train(f"run_dir={tmp_path}", "format=gguf", script="export.py", timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == ["error: out is required: the directory to write (out=DIR)"]


def test_a_failure_while_writing_leaves_the_old_out_untouched_and_no_temporary_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), built_directory(out) as folder:
        (folder / "half.bin").write_bytes(b"\0" * 10)
        raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_overwrite_replaces_everything_in_out(
    quickstart_run: Path, export_config: Compose, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an older export")
    export(export_config(f"run_dir={quickstart_run}", f"out={out}", "format=gguf", "overwrite=true"))
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.gguf"]
    assert leftovers(tmp_path) == []


class FakeHub:
    """The Hub's create-repo, preupload and commit endpoints (every file `regular`: sent inline, base64)."""

    def __init__(self, url: str, repo_id: str) -> None:
        self.url, self.repo_id = url, repo_id
        self.created: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.tokens: set[str] = set()
        self.card_metadata: dict | None = None

    def __call__(self, path: str, body: bytes, headers: Message) -> Reply:
        self.tokens.add(headers.get("Authorization", ""))
        if path == "/api/repos/create":
            self.created.append(json.loads(body))
            return self.json({"url": f"{self.url}/{self.repo_id}"})
        if path == "/api/validate-yaml":  # the model card's front matter, checked before the upload
            content = json.loads(body)["content"]
            self.card_metadata = yaml.safe_load(content.split("---\n")[1])
            return self.json({})
        if path == f"/api/models/{self.repo_id}/preupload/main":
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return self.json({"files": modes})
        if path == f"/api/models/{self.repo_id}/commit/main":
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            oid = "0123456789abcdef0123456789abcdef01234567"
            return self.json({"commitUrl": f"{self.url}/{self.repo_id}/commit/{oid}", "commitOid": oid})
        return Reply(404, {"X-Error-Code": "EntryNotFound"})

    @staticmethod
    def json(data: dict) -> Reply:
        return Reply(200, {"Content-Type": "application/json"}, json.dumps(data).encode())


@pytest.mark.slow
def test_push_to_hub_creates_the_repo_and_uploads_every_file(quickstart_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_", "HYDRA_")) and not k.lower().endswith("_proxy")
    }
    with serving(LoopbackServer()) as hub:
        fake = FakeHub(hub.url, "me/tiny-instruct")
        hub.on_post = fake
        env |= {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test", "HF_HOME": str(tmp_path / "hf_home")}
        done = subprocess.run(
            [
                sys.executable,
                "export.py",
                f"run_dir={quickstart_run}",
                f"out={out}",
                "push_to_hub=me/tiny-instruct",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, (hub.requests, done.stderr[-3000:])
    [created] = fake.created
    assert (created["organization"], created["name"]) == ("me", "tiny-instruct")
    assert created.get("visibility") == "private" or created.get("private") is True  # hub 1.x / 0.x payloads
    assert fake.tokens == {"Bearer hf_test"}
    assert fake.files == {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(fake.files) == HF_FILES
    assert 'from_pretrained("me/tiny-instruct")' in fake.files["README.md"].decode()
    assert fake.card_metadata == {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["gpt2", "gpt-finetune"],
    }
    assert f"pushed {out} to {hub.url}/me/tiny-instruct" in done.stdout


def test_a_base_model_exports_without_a_run(export_config: Compose, tmp_path: Path) -> None:
    out = export(export_config("model=tiny", "prompt_style=chatml", f"out={tmp_path / 'base'}"))
    card = (out / "README.md").read_text()
    assert "none (random init, size tiny)" in card and "## Training" not in card
    template = json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    assert "<|im_start|>assistant" in template
