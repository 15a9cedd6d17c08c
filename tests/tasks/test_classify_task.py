"""The classifier: which parameters train, pooling, the forward pass, metrics, test artifacts, reloading."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from gpt_finetune.callbacks.predictions import TestPredictions as PredictionsCallback
from gpt_finetune.callbacks.predictions import confusion_figure
from gpt_finetune.data.classify_datamodule import ClassificationDataModule
from gpt_finetune.errors import UserError
from gpt_finetune.predict import (
    classifier_checkpoint,
    literal_text_argv,
    predict,
    read_texts,
)
from gpt_finetune.serving.loading import load_classifier
from gpt_finetune.tasks.classify import Classification, pool
from gpt_finetune.tokenizer import gpt2_tokenizer

CONF = Path(__file__).resolve().parents[2] / "conf"
TINY = {"size": "tiny", "pretrained": False, "context_length": 64}
LABELS = ["ham", "spam"]
BLOCK = 49984  # one tiny block: 2 LayerNorms (2 x 128), c_attn 64x192+192, c_proj 64x64+64, MLP 64x256x64
HEAD, LN_F = 64 * 2 + 2, 128


def classifier(**overrides: object) -> Classification:
    torch.manual_seed(0)
    return Classification(**{"model": TINY, "labels": LABELS, **overrides}).eval()


def trainable_names(task: Classification) -> set[str]:
    return {name for name, p in task.model.named_parameters() if p.requires_grad}


def test_head_replaces_the_lm_head() -> None:
    task = classifier(labels=["a", "b", "c"])
    head = task.model.lm_head
    assert isinstance(head, torch.nn.Linear) and (head.in_features, head.out_features) == (64, 3)
    assert head.bias is not None
    assert task.model(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 3)  # the book's `model(x)[:, -1]`


@pytest.mark.parametrize(
    ("trainable", "prefixes", "count"),
    [
        ("head", ("lm_head.",), HEAD),
        ("last_block", ("lm_head.", "transformer.ln_f.", "transformer.h.1."), HEAD + LN_F + BLOCK),
        (
            "last_two_blocks",
            ("lm_head.", "transformer.ln_f.", "transformer.h.1.", "transformer.h.0."),
            HEAD + LN_F + 2 * BLOCK,
        ),
    ],
)
def test_trainable_modes_unfreeze_exactly_their_modules(trainable: str, prefixes: tuple, count: int) -> None:
    task = classifier(trainable=trainable)
    names = {name for name, _ in task.model.named_parameters()}
    assert trainable_names(task) == {n for n in names if n.startswith(prefixes)}
    assert sum(p.numel() for p in task.model.parameters() if p.requires_grad) == count
    optimizer = task.configure_optimizers()
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == count


def test_trainable_all_trains_everything_and_unknown_modes_fail() -> None:
    task = classifier(trainable="all")
    assert all(p.requires_grad for p in task.model.parameters())
    with pytest.raises(UserError, match=r"task\.trainable='blocks' is not one of head, last_block"):
        classifier(trainable="blocks")
    with pytest.raises(UserError, match=r"task\.pooling='max' is not one of last_position, last_token, mean"):
        classifier(pooling="max")


def test_frozen_parameters_stay_put_while_training() -> None:
    task = classifier(trainable="last_block").train()
    before = {name: p.detach().clone() for name, p in task.model.named_parameters()}
    optimizer = task.configure_optimizers()
    ids, lengths = torch.randint(0, 50257, (4, 8)), torch.tensor([8, 5, 3, 8])
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(task(ids, lengths), torch.tensor([0, 1, 0, 1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {name for name, p in task.model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == trainable_names(task)


def test_pooling_golden() -> None:
    hidden = torch.arange(16, dtype=torch.float).reshape(2, 4, 2)  # rows [[0,1],[2,3],...], [[8,9],...]
    lengths = torch.tensor([2, 4])
    assert pool(hidden, lengths, "last_position").tolist() == [[6, 7], [14, 15]]
    assert pool(hidden, lengths, "last_token").tolist() == [[2, 3], [14, 15]]
    assert pool(hidden, lengths, "mean").tolist() == [[1, 2], [11, 12]]


@pytest.mark.parametrize("pooling", ["last_position", "last_token", "mean"])
def test_logits_are_the_head_at_the_pooled_hidden_state(pooling: str) -> None:
    task = classifier(pooling=pooling)
    ids, lengths = torch.randint(0, 50257, (2, 10)), torch.tensor([4, 10])
    ids[0, 4:] = 50256  # right padding
    with torch.no_grad():
        logits = task(ids, lengths)
        hidden = task.model.hidden_states(ids)  # (B, T, C)
        if pooling == "mean":
            pooled = torch.stack([hidden[0, :4].mean(0), hidden[1].mean(0)])
        else:
            pooled = hidden[[0, 1], [9, 9] if pooling == "last_position" else [3, 9]]
        expected = task.model.lm_head(pooled)
    torch.testing.assert_close(logits, expected)
    if pooling == "last_position":  # the book: the head over every position, then index -1
        torch.testing.assert_close(logits, task.model(ids)[:, -1, :].detach())


def test_right_padding_changes_only_last_position_pooling() -> None:
    ids = torch.randint(0, 50000, (1, 6))
    padded = torch.cat([ids, torch.full((1, 4), 50256)], dim=1)
    length = torch.tensor([6])
    for pooling, same in (("last_token", True), ("mean", True), ("last_position", False)):
        task = classifier(pooling=pooling)
        with torch.no_grad():
            assert torch.allclose(task(ids, length), task(padded, length), atol=1e-5) is same, pooling


def spam_file(tmp_path: Path, n: int = 40) -> str:
    """Separable toy data: spam texts shout about prizes, ham texts talk about dinner."""
    rows = [
        f"spam\tWIN a FREE prize number {i} now" if i % 2 else f"ham\tdinner at {i} tonight?"
        for i in range(n)
    ]
    path = tmp_path / "toy.tsv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[L.Trainer, Classification, Path]:
    """One epoch of fit + test on toy data, with checkpoints and the TestPredictions callback."""
    out = tmp_path_factory.mktemp("fit")
    dm = ClassificationDataModule(labels=LABELS, path=spam_file(out), batch_size=4, padding="longest_train")
    task = classifier(trainable="last_block", optimizer={"lr": 1e-3}).train()  # a small optimizer step: fast
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best-{step}", monitor="val/loss")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        callbacks=[checkpoint, PredictionsCallback(str(out))],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=dm)
    assert {"train/loss", "train/acc", "train/f1", "val/loss", "val/acc", "val/f1"} <= set(
        trainer.callback_metrics
    )
    trainer.test(task, datamodule=dm, ckpt_path=checkpoint.best_model_path, weights_only=True)
    return trainer, task, out


def test_test_writes_metrics_predictions_and_confusion_matrix(fitted: tuple) -> None:
    trainer, _, out = fitted
    metrics = trainer.callback_metrics
    assert {"test/loss", "test/acc", "test/f1"} <= set(metrics)
    rows = list(csv.DictReader((out / "test_predictions.csv").open()))
    test = trainer.datamodule.splits["test"]
    assert [r["text"] for r in rows] == [e.text for e in test] and len(rows) == 8
    assert list(rows[0]) == ["text", "label", "predicted", "prob_ham", "prob_spam"]
    assert all(abs(float(r["prob_ham"]) + float(r["prob_spam"]) - 1) < 1e-5 for r in rows)
    accuracy = sum(r["label"] == r["predicted"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(float(metrics["test/acc"]))
    matrix = metrics["test/confusion_matrix"]
    assert matrix.tolist() == [
        [sum(r["label"] == t and r["predicted"] == p for r in rows) for p in LABELS] for t in LABELS
    ]
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_reloads_offline_and_predicts_as_tested(fitted: tuple) -> None:
    trainer, task, out = fitted
    path = classifier_checkpoint(str(out))
    assert path.name.startswith("best-")
    saved = torch.load(path, weights_only=True)
    assert saved["hyper_parameters"]["labels"] == LABELS
    assert saved["input_format"] == trainer.datamodule.input_format() == task.input_format
    loaded = load_classifier(path)
    rows = list(csv.DictReader((out / "test_predictions.csv").open()))
    probs = loaded.predict_proba([r["text"] for r in rows], batch_size=3)
    expected = torch.tensor([[float(r["prob_ham"]), float(r["prob_spam"])] for r in rows])
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)


def test_predict_prints_label_and_probability(fitted: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, out = fitted
    cfg = OmegaConf.create(
        {"run_dir": str(out), "checkpoint": None, "text": "WIN a FREE prize", "file": None}
        | {"batch_size": 4, "device": "cpu"}
    )
    [(label, probability, _)] = predict(cfg)
    assert capsys.readouterr().out == f"{label}\t{probability:.4f}\tWIN a FREE prize\n"
    # The book's computation, by hand: the text right-padded with end-of-text to the training width, the
    # head's logits at the last position of a fresh model holding the best checkpoint's weights, softmax.
    saved = torch.load(classifier_checkpoint(str(out)), weights_only=True)
    ids = gpt2_tokenizer().encode("WIN a FREE prize")
    ids += [50256] * (saved["input_format"]["width"] - len(ids))
    reference = classifier()
    reference.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        probs = torch.softmax(reference.model(torch.tensor([ids]))[0, -1].double(), dim=-1)
    assert label == LABELS[int(probs.argmax())]
    assert probability == pytest.approx(float(probs.max()), abs=1e-6)


def test_confusion_figure_writes_each_count() -> None:
    figure = confusion_figure(torch.tensor([[5, 1], [0, 7]]), LABELS)
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.texts] == ["5", "1", "0", "7"]
    assert [t.get_text() for t in axes.get_xticklabels()] == LABELS


def test_padding_over_the_model_context_fails_early(tmp_path: Path) -> None:
    path = tmp_path / "long.tsv"
    path.write_text("".join(f"{'spam' if i % 2 else 'ham'}\t{' '.join(['word'] * 80)}\n" for i in range(20)))
    for padding in ("longest_train", "batch"):
        dm = ClassificationDataModule(labels=LABELS, path=str(path), padding=padding)
        trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False)
        with pytest.raises(
            UserError, match=r"padded to 80 tokens, over the model context 64; set data\.max_length=64"
        ):
            trainer.fit(classifier(), datamodule=dm)


def test_predict_inputs_fail_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="exactly one of"):
        read_texts(None, None)
    with pytest.raises(UserError, match="exactly one of"):
        read_texts("hi", "x.txt")
    (tmp_path / "texts.txt").write_text("first\n\n  \nsecond, with comma\n")
    assert read_texts(None, str(tmp_path / "texts.txt")) == ["first", "second, with comma"]
    with pytest.raises(UserError, match=r"no checkpoints/\*.ckpt"):
        classifier_checkpoint(str(tmp_path))
    with pytest.raises(UserError, match="pass run_dir=RUN"):
        classifier_checkpoint(None, None)
    with pytest.raises(UserError, match="not a classification checkpoint"):
        torch.save({"hyper_parameters": {"prompt_style": "alpaca"}}, tmp_path / "x.ckpt")
        load_classifier(tmp_path / "x.ckpt")


@pytest.mark.parametrize("text", ["Free entry! Win £100, now: it's ${x} \\o/", 'say "hi"', "end\\", "a=b,c"])
def test_text_argument_reaches_predict_verbatim(text: str) -> None:
    argv = literal_text_argv(["predict.py", "run_dir=r", f"text={text}"])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert compose("predict", overrides=argv[1:]).text == text
