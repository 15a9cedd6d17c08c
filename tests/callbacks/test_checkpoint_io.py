"""StreamingCheckpointIO: atomic like Lightning's default, without a whole serialized copy in memory."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from gpt_finetune.callbacks.checkpointing import StreamingCheckpointIO

# In a fresh process: the peak-RSS growth of saving a 512 MiB checkpoint, ours first (the peak only grows).
MEASURE = """
import resource, sys, torch
from lightning.fabric.plugins import TorchCheckpointIO
from gpt_finetune.callbacks.checkpointing import StreamingCheckpointIO

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

state = {"weights": torch.ones(128 * 2**20)}  # 512 MiB, touched
for io, name in ((StreamingCheckpointIO(), "ours"), (TorchCheckpointIO(), "lightning")):
    before = peak_mib()
    io.save_checkpoint(state, f"{sys.argv[1]}/{name}.ckpt")
    print(name, peak_mib() - before)
"""


@pytest.mark.slow
def test_saving_does_not_hold_the_serialized_checkpoint_in_memory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path)], capture_output=True, text=True, check=True
    )
    growth = {name: float(mib) for name, mib in (line.split() for line in done.stdout.splitlines())}
    assert growth["ours"] < 64
    assert growth["lightning"] > 400  # the default buffers it: the measurement can tell
    ours = StreamingCheckpointIO().load_checkpoint(tmp_path / "ours.ckpt", weights_only=True)
    assert torch.equal(ours["weights"], torch.ones(128 * 2**20))


def test_a_failed_save_keeps_the_old_checkpoint_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    io = StreamingCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):  # what pickle raises for a lambda
        io.save_checkpoint({"step": 2, "unpicklable": lambda: None}, path)
    assert TorchCheckpointIO().load_checkpoint(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
