"""Hub datasets: `hf://datasets/OWNER/NAME[/FILE][@REVISION]`, read through huggingface_hub and its cache.

The first read downloads into the Hugging Face cache (`HF_HOME`); later reads find the files there, also
offline (`HF_HUB_OFFLINE=1`). Without FILE the repo's data files are read: the only one, else those of its
train split (a path with `train` as a word, e.g. `data/train-00000-of-00002.parquet`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from gpt_finetune.errors import UserError

HUB_PREFIX = "hf://datasets/"
DATA_SUFFIXES = (".parquet", ".jsonl", ".ndjson", ".json", ".csv", ".tsv")
FORM = "hf://datasets/OWNER/NAME[/FILE][@REVISION]"


@dataclass(frozen=True)
class HubDataset:
    """A dataset repo on the Hub, one of its files (None: its data files) and a revision (None: main)."""

    repo_id: str
    filename: str | None = None
    revision: str | None = None

    def name(self, filename: str | None = None) -> str:
        """The `hf://` name of the repo or of one of its files (`.../NAME@REVISION/FILE`), for messages."""
        repo = HUB_PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")
        return "/".join(filter(None, [repo, filename or self.filename]))


def is_hub(source: str) -> bool:
    return source.startswith("hf://")


def parse_hub(source: str) -> HubDataset:
    """The dataset `source` names; the revision may follow NAME (huggingface_hub's form) or the end."""
    if not source.startswith(HUB_PREFIX):
        raise UserError(f"{source}: the Hub is read for datasets only; write {FORM}")
    owner, _, rest = source[len(HUB_PREFIX) :].partition("/")
    name, _, filename = rest.partition("/")
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
    elif "@" in filename:
        filename, revision = filename.rsplit("@", 1)
    if not owner or not name or revision == "":
        raise UserError(f"{source}: not a Hub dataset name; write {FORM}")
    return HubDataset(f"{owner}/{name}", filename.strip("/") or None, unquote(revision) if revision else None)


def hub_files(source: str) -> list[tuple[Path, str]]:
    """(local file, its hf:// name) for each data file `source` names, downloaded once into the cache."""
    from huggingface_hub import hf_hub_download, snapshot_download

    dataset = parse_hub(source)
    try:
        if dataset.filename is not None:
            path = hf_hub_download(
                dataset.repo_id, dataset.filename, repo_type="dataset", revision=dataset.revision
            )
            return [(Path(path), dataset.name())]
        folder = Path(
            snapshot_download(
                dataset.repo_id,
                repo_type="dataset",
                revision=dataset.revision,
                allow_patterns=[f"*{suffix}" for suffix in DATA_SUFFIXES],
            )
        )
    except Exception as error:  # offline without a cache, no such repo / file / revision, HTTP errors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"{source}: cannot read it from the Hugging Face Hub and it is not cached ({reason}); check the "
            "name, revision and network (a dataset read once reads offline), or pass a local file"
        ) from None
    names = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in DATA_SUFFIXES
    )
    return [(folder / name, dataset.name(name)) for name in data_files(names, dataset)]


def data_files(names: list[str], dataset: HubDataset) -> list[str]:
    """Which of a repo's data files to read: the only one, else those of the train split."""
    if len(names) == 1:
        return names
    if not names:
        raise UserError(
            f"{dataset.name()}: holds no data files ({', '.join(DATA_SUFFIXES)}); check the dataset name"
        )
    train = [name for name in names if "train" in re.split(r"[-_./]", name.lower())]
    if train:
        return train
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise UserError(
        f"{dataset.name()}: holds {len(names)} data files and no train split ({shown}); name one, e.g. "
        f"data.path={dataset.name(names[0])}"
    )
