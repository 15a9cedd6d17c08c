"""One place resolves `device=auto` and reads peak memory for every command and benchmark."""

from __future__ import annotations

import pytest
import torch

from gpt_finetune.devices import peak_memory_gib, resolve_device
from gpt_finetune.errors import UserError


@pytest.mark.parametrize("available", [True, False])
def test_auto_is_cuda_when_available_else_cpu(monkeypatch: pytest.MonkeyPatch, available: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert resolve_device("auto") == torch.device("cuda" if available else "cpu")
    assert resolve_device() == resolve_device("auto")


def test_named_devices_are_taken_as_given() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)


def test_an_unknown_device_is_one_line_naming_the_choices() -> None:
    with pytest.raises(UserError, match=r"unknown device 'gpu'; use device=auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")


def test_peak_memory_on_a_cpu_is_the_process_peak_rss_in_gib() -> None:
    assert 0.05 < peak_memory_gib(torch.device("cpu")) < 64  # torch alone takes ~0.2 GiB; MiB would be ~200
