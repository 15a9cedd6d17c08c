"""Checkpoints carry every random state training draws from, CUDA's included, so dropout resumes exactly."""

from __future__ import annotations

import random

import pytest
import torch

from gpt_finetune.callbacks.checkpointing import LastCheckpoint, random_states, set_random_states


def test_cpu_states_round_trip_through_the_callback_state() -> None:
    callback = LastCheckpoint("unused")
    state = callback.state_dict()
    expected = (torch.rand(3), random.random())
    torch.rand(5)  # move on
    callback.load_state_dict(state)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_cuda_states_are_saved_once_cuda_is_in_use_and_restored_per_device(monkeypatch) -> None:
    # Without a GPU: a stand-in CUDA with two devices, each with its own generator state.
    saved = [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]
    restored: dict[int, torch.Tensor] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.update({device: state}))
    states = random_states()
    assert states["cuda"] is saved
    set_random_states(states)
    assert restored == {0: saved[0], 1: saved[1]}


def test_no_cuda_state_before_cuda_is_used(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert "cuda" not in random_states()  # asking would initialise CUDA in a CPU run


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dropout_continues_identically_after_restoring() -> None:
    dropout = torch.nn.Dropout(0.5)
    x = torch.ones(1000, device="cuda")
    dropout(x)  # CUDA in use
    states = random_states()
    expected = dropout(x)
    dropout(x)
    set_random_states(states)
    assert torch.equal(dropout(x), expected)
