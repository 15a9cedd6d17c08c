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

# In a fresh process: the peak growth of anonymous memory (RssAnon, sampled every millisecond) while saving a
# 512 MiB checkpoint, ours and then Lightning's default. Not the peak RSS: other processes' memory pressure
# evicts this one's mapped libraries, and Lightning's copy then grew it by 88 MiB only (once under -n 2).
MEASURE = """
import sys, threading, time, torch
from lightning.fabric.plugins import TorchCheckpointIO
from gpt_finetune.callbacks.checkpointing import StreamingCheckpointIO

def anonymous_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("RssAnon:"))

def peak_growth(save):
    before = peak = anonymous_mib()
    done = threading.Event()
    def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, anonymous_mib())
            time.sleep(0.001)
    watcher = threading.Thread(target=watch)
    watcher.start()
    save()
    done.set()
    watcher.join()
    return peak - before

state = {"weights": torch.ones(128 * 2**20)}  # 512 MiB, touched
for io, name in ((StreamingCheckpointIO(), "ours"), (TorchCheckpointIO(), "lightning")):
    print(name, peak_growth(lambda: io.save_checkpoint(state, f"{sys.argv[1]}/{name}.ckpt")))
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
