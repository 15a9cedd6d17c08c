"""The README.md model card of an exported Hugging Face directory: what, how it was made, how to load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpt_finetune.model.config import HUB_IDS
from gpt_finetune.serving.loading import UsableModel


def shown_path(path: str) -> str:
    """A file the card names: a URL or Hub id as it is, a local path by its name alone (a card is published,
    and an absolute path tells nothing but the exporting machine's layout)."""
    return path if "://" in path or not Path(path).is_absolute() else Path(path).name


def base_model(spec: dict[str, Any]) -> str:
    """Where the backbone's starting weights came from: a Hub id, a local folder's name, or random init."""
    if spec.get("weights"):
        return shown_path(str(spec["weights"]))
    size = str(spec.get("size", "gpt2-small"))
    if spec.get("pretrained", True) and size in HUB_IDS:
        return HUB_IDS[size]
    return f"none (random init, size {size})"


def recipe(usable: UsableModel) -> list[tuple[str, str]]:
    """(setting, value) rows from the run's config.yaml and metrics.json; empty for a base model."""
    config, metrics = usable.config, usable.metrics
    lora = usable.lora
    adapters = [("LoRA", f"r={lora.get('r')}, alpha={lora.get('alpha')}, targets {lora.get('targets')}")]
    if not config and not usable.data:
        return adapters if lora.get("r") is not None else []
    data = config.get("data") or usable.data
    trainer, optimizer = config.get("trainer", {}), config.get("optimizer", {})
    task = "classification" if usable.kind == "classify" else f"instruction tuning ({usable.prompt_style})"
    if usable.classifier is not None:
        task += f", pooling {usable.classifier.hparams.pooling}, labels {', '.join(usable.labels)}"
    epochs = metrics.get("epochs", trainer.get("max_epochs"))
    steps = metrics.get("global_step")
    rows = [
        ("task", task),
        ("data", shown_path(str(data.get("path", "?")))),
        ("learning rate", str(optimizer.get("lr", "?"))),
        ("epochs", f"{epochs}" + (f" ({steps} steps)" if steps is not None else "")),
        ("precision", str(trainer.get("precision", "?"))),
    ]
    return rows + adapters if lora.get("r") is not None else rows


def results(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's final `split/name` figures (numbers only) from metrics.json."""
    return [
        (key, f"{value:.4g}")
        for key, value in metrics.items()
        if "/" in key and isinstance(value, int | float) and key.split("/")[0] in ("train", "val", "test")
    ]


def checkpoint_name(path: Path) -> str:
    """`checkpoints/best-step=96.ckpt`: a run's checkpoint relative to its run folder, else by name."""
    return f"{path.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name


def table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    return "\n".join(lines + [f"| {a} | {b.replace('|', '/')} |" for a, b in rows])


def usage(usable: UsableModel, location: str) -> str:
    """A Python snippet that loads the export with transformers and uses it."""
    if usable.kind == "classify":
        return (
            "```python\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{location}")\n'
            f'model = AutoModelForSequenceClassification.from_pretrained("{location}")\n'
            'texts = ["Win a free prize now!", "See you at lunch?"]\n'
            'batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")\n'
            "probs = model(**batch).logits.softmax(-1)\n"
            "print([model.config.id2label[i] for i in probs.argmax(-1).tolist()])\n"
            "```"
        )
    return (
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{location}")\n'
        f'model = AutoModelForCausalLM.from_pretrained("{location}")\n'
        'messages = [{"role": "user", "content": "Name three primary colours."}]\n'
        "ids = tokenizer.apply_chat_template(\n"
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True\n'
        ')["input_ids"]\n'
        "out = model.generate(ids, max_new_tokens=128)\n"
        "print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))\n"
        "```"
    )


def model_card(usable: UsableModel, dtype: str, location: str) -> str:
    """README.md for the directory `location` (a Hub id, or a local folder: named by its name alone) exported
    from `usable` in `dtype`."""
    location = shown_path(location)
    config = usable.gpt.config
    classify = usable.kind == "classify"
    base = base_model(usable.spec)
    parameters = sum(p.numel() for p in usable.gpt.parameters())
    front = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {'text-classification' if classify else 'text-generation'}",
        *([f"base_model: {base}"] if base in HUB_IDS.values() else []),
        "tags: [gpt2, gpt-finetune]",
        "---",
    ]
    what = (
        f"GPT-2 fine-tuned to classify text ({', '.join(usable.labels)})"
        if classify
        else f"GPT-2 fine-tuned to follow instructions in the {usable.prompt_style} prompt style "
        "(the tokenizer's chat template renders it)"
    )
    source = f" from `{checkpoint_name(usable.checkpoint)}`" if usable.checkpoint is not None else ""
    parts = [
        "\n".join(front),
        f"# {usable.name}\n\n{what}; exported by gpt-finetune's `export.py`{source}.",
        "## Model\n\n"
        + table(
            ("", "value"),
            [
                ("base model", base),
                (
                    "size",
                    f"{parameters / 1e6:.1f}M parameters: {config.n_layers} layers, "
                    f"{config.n_heads} heads, width {config.emb_dim}, context {config.context_length}",
                ),
                ("weights", dtype),
            ],
        ),
    ]
    rows = recipe(usable)
    if rows:
        parts.append("## Training\n\n" + table(("setting", "value"), rows))
    scores = results(usable.metrics)
    if scores:
        parts.append("## Results (metrics.json)\n\n" + table(("metric", "value"), scores))
    parts.append("## Use it\n\n" + usage(usable, location))
    if classify:
        parts.append(
            "The class head's bias is folded into the final LayerNorm's bias (the `score` layer of "
            "GPT2ForSequenceClassification has none), so class logits equal the original's; the last hidden "
            "state is shifted by it."
        )
    return "\n\n".join(parts) + "\n"
