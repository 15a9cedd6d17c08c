"""Packing: golden packed rows, the per-record rule kept, the packer, the mask, the settings."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from gpt_finetune.config import bundled_path
from gpt_finetune.data.collate import collate_instructions
from gpt_finetune.data.instruct_datamodule import InstructionDataModule
from gpt_finetune.data.packing import PackedRows, collate_packed, document_attention_mask, pack_records
from gpt_finetune.errors import UserError

CONF = Path(__file__).resolve().parents[2] / "conf"
E = 50256  # end-of-text: appended to every record, and the padding id
# Two rows: records [0..4] (prompt 3) and [5, 6] (prompt 1) side by side; [7, 8, 9] (prompt 2) alone.
ROWS = [[([0, 1, 2, 3, 4], 3), ([5, 6], 1)], [([7, 8, 9], 2)]]


def test_golden_packed_rows() -> None:
    batch = collate_packed(ROWS)
    assert batch["input_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6], [7, 8, 9, E, E, E, E]]
    assert batch["targets"].tolist() == [
        [1, 2, 3, 4, E, 6, E],  # each record learns to stop, as alone in a batch
        [8, 9, E, -100, -100, -100, -100],  # padding is never a target
    ]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 0, 0, 0, 0]]
    assert batch["document_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1], [0, 0, 0, -1, -1, -1, -1]]


def test_golden_packed_rows_with_prompt_masking_and_truncation() -> None:
    masked = collate_packed(ROWS, mask_prompt=True)
    assert masked["targets"].tolist() == [
        [-100, -100, 3, 4, E, 6, E],  # the first prompt_length - 1 targets of each record
        [-100, 9, E, -100, -100, -100, -100],
    ]
    cut = collate_packed(ROWS, max_length=3, mask_prompt=True)
    assert cut["input_ids"].tolist() == [[0, 1, 2, 5, 6], [7, 8, 9, E, E]]
    assert cut["targets"].tolist() == [[-100, -100, 3, 6, E], [-100, 9, E, -100, -100]]
    assert cut["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 0]]
    assert cut["document_ids"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, -1, -1]]


@pytest.mark.parametrize("mask_prompt", [False, True])
@pytest.mark.parametrize("max_length", [None, 12])
def test_every_record_gets_the_inputs_and_targets_it_gets_alone(mask_prompt: bool, max_length: int | None):
    rng = random.Random(0)
    rows = [
        [([rng.randrange(50000) for _ in range(rng.randint(1, 20))], rng.randint(1, 8)) for _ in range(n)]
        for n in (3, 1, 5)
    ]
    batch = collate_packed(rows, max_length=max_length, mask_prompt=mask_prompt)
    for r, row in enumerate(rows):
        start = 0
        for document, (ids, prompt) in enumerate(row):
            alone = collate_instructions(
                [ids], max_length=max_length, prompt_lengths=[prompt] if mask_prompt else None
            )
            end = start + alone["input_ids"].shape[1]
            assert torch.equal(batch["input_ids"][r, start:end], alone["input_ids"][0])
            assert torch.equal(batch["targets"][r, start:end], alone["targets"][0])
            assert batch["position_ids"][r, start:end].tolist() == list(range(end - start))
            assert set(batch["document_ids"][r, start:end].tolist()) == {document}
            start = end
        assert (batch["targets"][r, start:] == -100).all() and (batch["document_ids"][r, start:] == -1).all()


def test_packer_places_every_record_once_within_the_row_length() -> None:
    rng = random.Random(1)
    widths = [rng.randint(1, 60) for _ in range(300)]
    rows = pack_records(widths, 128, seed=3)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert all(sum(widths[i] for i in row) <= 128 for row in rows)
    assert len(rows) <= sum(widths) // 128 + 3  # near the lower bound, not one row per record
    assert pack_records(widths, 128, seed=3) == rows  # deterministic for a seed
    assert pack_records(widths, 128, seed=4) != rows  # equal widths are ordered by the seed


def test_packer_skips_empty_records_and_refuses_one_longer_than_a_row() -> None:
    assert pack_records([3, 0, 2], 5, seed=0) == [[0, 2]]  # an empty record has no inputs to pack
    assert pack_records([], 5, seed=0) == []
    with pytest.raises(ValueError, match="does not fit"):
        pack_records([3, 6], 5, seed=0)


def test_document_mask_is_causal_within_each_document_and_never_an_empty_row() -> None:
    mask = document_attention_mask(torch.tensor([[0, 0, 1, 1, 1, -1, -1]]))
    assert mask.shape == (1, 1, 7, 7)
    expected = [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0],  # the second document starts afresh
        [0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],  # padding sees itself (an all-False row would give NaN)
        [0, 0, 0, 0, 0, 1, 1],
    ]
    assert mask[0, 0].int().tolist() == expected


def sample_data(**settings: Any) -> InstructionDataModule:
    data = InstructionDataModule(path=bundled_path("sample_instructions.json"), **settings)
    data.build()
    return data


def test_datamodule_packs_the_train_split_only() -> None:
    data = sample_data(packing=True, pack_length=128, batch_size=4, mask_prompt=True)
    train = data.datasets["train"]
    assert isinstance(train, PackedRows) and len(train) == 50
    assert sorted(i for row in train.rows for i in row) == list(range(102))  # every record, once
    assert [len(data.datasets[split]) for split in ("val", "test")] == [6, 12]  # records, unpacked
    batches = list(data.train_dataloader())
    assert len(batches) == 12  # 50 rows in batches of 4, the short one dropped
    assert all(b["input_ids"].shape[1] <= 128 and b["position_ids"].shape[0] == 4 for b in batches)
    val = next(iter(data.val_dataloader()))
    assert set(val) == {"input_ids", "targets"}  # validation batches as without packing
    assert data.pack_length == 128 and sample_data().pack_length is None


def test_pack_length_defaults_to_max_length() -> None:
    data = sample_data(packing=True, max_length=200, batch_size=2)
    assert data.pack_length == 200
    assert all(sum(min(len(ids), 200) for ids, _ in row) <= 200 for row in data.datasets["train"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"group_by_length": True},
            "data.packing=true already fills rows; set data.group_by_length=false",
        ),
        ({"pack_length": 0}, "data.pack_length=0 must be >= 1 (or null = data.max_length)"),
        (
            {"max_length": None},
            "data.packing=true needs a row length: set data.pack_length or data.max_length",
        ),
    ],
)
def test_settings_that_cannot_pack_fail_in_one_line(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as error:
        InstructionDataModule(packing=True, **settings)
    assert str(error.value) == message


def test_rows_too_short_or_too_few_fail_in_one_line() -> None:
    with pytest.raises(UserError) as error:
        sample_data(packing=True, pack_length=64)
    assert str(error.value) == (
        "data.pack_length=64 is shorter than the longest training record (77 tokens, after "
        "data.max_length=1024); raise data.pack_length or lower data.max_length"
    )
    with pytest.raises(UserError) as error:
        sample_data(packing=True)  # 102 records fill 6 rows of 1024 tokens: not one batch of 8
    assert str(error.value) == (
        "data.packing=true packs the 102 train records into 6 rows of up to 1024 tokens, less than one "
        "batch of data.batch_size=8 rows (data.drop_last=true drops it); lower data.batch_size or "
        "data.pack_length"
    )


def test_config_keys_reach_the_datamodule(tmp_path: Path) -> None:
    overrides = ["data=sample", "data.packing=true", "data.pack_length=256", f"output_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    data = instantiate(cfg.data, _convert_="all")
    assert data.hparams.packing is True and data.pack_length == 256
