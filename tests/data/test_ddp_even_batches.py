"""Every rank gets the same number of training batches for any data size, batch size and world size, and
N ranks with batch b see the batches of one process with batch N x b (README's promise)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from ddp_faults import end_job, train_job
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from gpt_finetune.data.sampling import training_sampler


def rank_batches(
    n: int, batch_size: int, world: int, rank: int, epoch: int, **options: bool
) -> tuple[list[list[int]], int, int, int]:
    """Rank `rank`'s batches of one epoch through a DataLoader; the loader's len; the sampler's len and the
    number of indices it yields."""
    lengths = [(i * 7919) % 23 + 1 for i in range(n)]  # varied lengths, so grouping reorders
    trainer = SimpleNamespace(world_size=world, global_rank=rank)
    sampler = training_sampler(lengths, batch_size, trainer, seed=3, **options)
    sampler.set_epoch(epoch)
    loader = DataLoader(
        list(range(n)),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=options["drop_last"],
        collate_fn=list,
    )
    batches = list(loader)
    return batches, len(loader), len(sampler), len(list(sampler))


@settings(max_examples=400, deadline=None)
@given(
    n=st.integers(0, 70),
    batch_size=st.integers(1, 9),
    world=st.integers(1, 8),
    epoch=st.integers(0, 3),
    group_by_length=st.booleans(),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
)
@example(n=31, batch_size=8, world=2, epoch=0, group_by_length=True, shuffle=True, drop_last=True)
@example(n=31, batch_size=8, world=2, epoch=0, group_by_length=True, shuffle=True, drop_last=False)
@example(n=15, batch_size=4, world=2, epoch=0, group_by_length=False, shuffle=True, drop_last=True)
def test_every_rank_gets_the_batches_of_one_global_order(
    n: int, batch_size: int, world: int, epoch: int, **options: bool
) -> None:
    ranks = [rank_batches(n, batch_size, world, r, epoch, **options) for r in range(world)]
    for batches, loader_len, sampler_len, indices in ranks:
        assert len(batches) == len(ranks[0][0])  # a rank with a batch more waits forever in its collective
        assert loader_len == len(batches) and sampler_len == indices  # len() is true
        assert all(0 < len(b) <= batch_size for b in batches)

    # The same global batches as one process with batch world x batch_size, step by step.
    single, *_ = rank_batches(n, batch_size * world, 1, 0, epoch, **options)
    assert len(single) == len(ranks[0][0])
    seen = [i for batches, *_ in ranks for batch in batches for i in batch]
    for step, whole in enumerate(single):
        shares = [i for batches, *_ in ranks for i in batches[step]]
        if options["drop_last"] or len(whole) == batch_size * world:
            assert sorted(shares) == sorted(whole)
        else:  # the short last global batch, padded with indices repeated from the order's start
            assert set(whole) <= set(shares)
    if options["drop_last"]:
        assert len(seen) == len(set(seen)) == n // (batch_size * world) * batch_size * world
    else:
        assert set(seen) == set(range(n))  # nothing lost


def write_records(path: Path, n: int) -> Path:
    """`n` instruction records of varied lengths."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    records = [
        {"instruction": f"Repeat {i}: " + " ".join(words[: 1 + i % 10]), "input": "", "output": words[i % 10]}
        for i in range(n)
    ]
    path.write_text(json.dumps(records))
    return path


@pytest.mark.slow
def test_two_ranks_finish_on_an_odd_length_grouped_split(tmp_path: Path) -> None:
    """37 records: a 31-record training split in global batches of 2 x 8 (it hung: rank 0 had 2 batches,
    rank 1 one)."""
    data = write_records(tmp_path / "records.json", 37)
    log = tmp_path / "log.txt"
    job = train_job(
        log,
        f"data.path={data}",
        "data.group_by_length=true",
        "trainer.max_epochs=2",
        "callbacks=none",
        "generate.enabled=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    try:
        code = job.wait(timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 2-process run hung: {log.read_text()[-2000:]}")
    finally:
        end_job(job)  # no rank left behind, even after a hang
    assert code == 0, log.read_text()[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 2  # one whole global batch of 16 per epoch
