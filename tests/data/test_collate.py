"""Golden tests for the instruction collate (DESIGN.md, "Instruction data semantics")."""

from __future__ import annotations

import torch

from gpt_finetune.data.collate import collate_instructions

SEQUENCES = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]


def test_design_reference_example() -> None:
    batch = collate_instructions(SEQUENCES)
    assert batch["input_ids"].tolist() == [
        [0, 1, 2, 3, 4],
        [5, 6, 50256, 50256, 50256],
        [7, 8, 9, 50256, 50256],
    ]
    assert batch["targets"].tolist() == [
        [1, 2, 3, 4, 50256],
        [6, 50256, -100, -100, -100],
        [8, 9, 50256, -100, -100],
    ]


def test_prompt_masking_ignores_the_first_prompt_length_minus_one_targets() -> None:
    batch = collate_instructions(SEQUENCES, prompt_lengths=[3, 1, 2])
    assert batch["targets"].tolist() == [
        [-100, -100, 3, 4, 50256],
        [6, 50256, -100, -100, -100],
        [-100, 9, 50256, -100, -100],
    ]


def test_truncation_cuts_inputs_and_targets_after_masking() -> None:
    batch = collate_instructions(SEQUENCES, max_length=3, prompt_lengths=[2, 1, 1])
    assert batch["input_ids"].tolist() == [[0, 1, 2], [5, 6, 50256], [7, 8, 9]]
    assert batch["targets"].tolist() == [[-100, 2, 3], [6, 50256, -100], [8, 9, 50256]]


def test_custom_pad_and_ignore_index() -> None:
    batch = collate_instructions([[1, 2], [3]], pad_id=0, ignore_index=-1)
    assert batch["input_ids"].tolist() == [[1, 2], [3, 0]]
    assert batch["targets"].tolist() == [[2, 0], [0, -1]]


def test_single_longest_row_has_no_padding_and_dtypes_are_long() -> None:
    batch = collate_instructions([[11, 12, 13]])
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.long
    assert batch["targets"].tolist() == [[12, 13, 50256]]
