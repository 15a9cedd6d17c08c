"""A LoRA run's adapters in PEFT's format, for `PeftModel.from_pretrained(exported_base, adapter_dir)`."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from gpt_finetune.artifacts import atomic_path, write_json
from gpt_finetune.serving.loading import UsableModel
from gpt_finetune.tasks.adapters import LoRASettings, peft_config, peft_state_dict

ADAPTER_DIR = "adapter"  # out/adapter/: adapter_config.json + adapter_model.safetensors


def write_peft_adapter(usable: UsableModel, directory: Path, base_model: str) -> list[Path]:
    """Write `adapter_config.json` and `adapter_model.safetensors` (PEFT's key names) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = LoRASettings(**usable.lora)
    tensors = {name: t.float().cpu() for name, t in peft_state_dict(usable.gpt).items()}
    with atomic_path(directory / "adapter_model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(directory / "adapter_config.json", peft_config(settings, base_model))
    return [directory / "adapter_config.json", directory / "adapter_model.safetensors"]
