"""docs/configuration.md documents every config group and every key of every file under conf/, compared with
the YAML files themselves: a key added or renamed without its row fails, and so does a row for a key that no
file has, or a default shown in code that the files do not hold.

The page's format: a table whose first column is `key` documents the keys of the files named (in code) by the
heading above it, `conf/<group>/` for a group's files or `conf/<name>.yaml` for one file. A key is written as
on the command line (`model.size`, `callbacks.early_stopping.patience`, `hydra.run.dir`); a cell may name
several keys. A node with a `_target_` is documented by its own row (`trainer.strategy`); files of
`# @package _global_` (experiments, hparams_search) may use keys documented anywhere on the page.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from command_lines import ROOT
from markdown_pages import Table, code_spans, headings, tables
from omegaconf import OmegaConf

PAGE = ROOT / "docs" / "configuration.md"


@dataclass(frozen=True)
class ConfigFile:
    """One YAML file under `conf`: its keys as the command line names them, with their values."""

    path: Path
    conf: Path

    @property
    def group(self) -> str:
        """`model`, `hydra/launcher`; "" for a command's primary config."""
        return self.path.parent.relative_to(self.conf).as_posix().removeprefix(".")

    @property
    def global_package(self) -> bool:
        return not self.group or "# @package _global_" in self.path.read_text()

    @property
    def package(self) -> str:
        """`model` for conf/model/*.yaml, `hydra.launcher` for conf/hydra/launcher/, "" for global files."""
        return "" if self.global_package else self.group.replace("/", ".")

    @cached_property
    def nodes(self) -> dict[str, Any]:
        """Every key path (interior nodes too) and its value, `defaults` left out."""
        content = OmegaConf.to_container(OmegaConf.load(self.path), resolve=False)
        assert isinstance(content, dict)
        return dict(walk(content, self.package))

    def required_keys(self) -> set[str]:
        """The leaves, each `_target_` standing for the node that holds it (the file's own: the group)."""
        nodes = self.nodes
        leaves = {key for key, value in nodes.items() if not (isinstance(value, dict) and value)}
        named = {key.removesuffix("._target_") if key.endswith("._target_") else key for key in leaves}
        return named - {"_target_", self.package}


def walk(node: dict, prefix: str, top: bool = True) -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        if top and key == "defaults":
            continue
        path = f"{prefix}.{key}" if prefix else str(key)
        yield path, value
        if isinstance(value, dict):
            yield from walk(value, path, top=False)


def config_files(conf: Path) -> list[ConfigFile]:
    return [ConfigFile(path, conf) for path in sorted(conf.rglob("*.yaml"))]


def covered(heading: str, files: list[ConfigFile]) -> list[ConfigFile]:
    """The files a heading names: `conf/<group>/` (its own files, not subgroups') or `conf/<name>.yaml`."""
    named = [span.removeprefix("conf/") for span in code_spans(heading) if span.startswith("conf/")]
    return [f for f in files for name in named if name in (f"{f.group}/", str(f.path.relative_to(f.conf)))]


def key_tables(page: Path, files: list[ConfigFile]) -> list[tuple[Table, list[ConfigFile]]]:
    """Each table whose first column is `key`, with the files its heading names (none: an error)."""
    found = [(table, covered(table.heading, files)) for table in tables(page) if table.header[0] == "key"]
    unnamed = [table.heading for table, named in found if not named]
    assert not unnamed, f"key tables under headings that name no conf/ file or folder: {unnamed}"
    return found


def documented(table: Table) -> set[str]:
    return {key for cell in table.column("key") for key in code_spans(cell)}


def as_value(text: str) -> Any:
    """A default as written in code (`5.0e-5`, `[ham, spam]`, `null`), read as the YAML files are read."""
    try:
        return OmegaConf.to_container(OmegaConf.create(f"value: {text}"), resolve=False)["value"]  # type: ignore[index]
    except Exception:
        return text


def missing_rows(page: Path, conf: Path) -> list[str]:
    """Keys of files under `conf` without a row in a table documenting that file; files no heading names."""
    files = config_files(conf)
    tables_of = key_tables(page, files)
    missing = []
    for f in files:
        rows = set().union(*(documented(t) for t, named in tables_of if f in named or f.global_package))
        missing += [f"{f.path.relative_to(conf)}: {key}" for key in sorted(f.required_keys() - rows)]
    named = {f.path for heading in headings(page) for f in covered(heading, files)}
    unnamed = [f.path.relative_to(conf) for f in files if f.path not in named]
    return missing + [f"{path}: no heading names it" for path in unnamed]


def stale_rows(page: Path, conf: Path) -> list[str]:
    """Rows for keys that none of the files their heading names has."""
    tables_of = key_tables(page, config_files(conf))
    return [
        f"{table.heading}: {key}"
        for table, named in tables_of
        for key in sorted(documented(table))
        if not any(key in f.nodes for f in named)
    ]


def wrong_defaults(page: Path, conf: Path) -> list[str]:
    """Defaults shown in code that are not the value of the row's keys in any file the heading names."""
    wrong = []
    for table, named in key_tables(page, config_files(conf)):
        for keys, default in zip(table.column("key"), table.column("default"), strict=True):
            values = [f.nodes[k] for f in named for k in code_spans(keys) if k in f.nodes]
            wrong += [f"{keys}: {shown}" for shown in code_spans(default) if as_value(shown) not in values]
    return wrong


def test_every_key_of_every_file_has_a_row() -> None:
    assert missing_rows(PAGE, ROOT / "conf") == []


def test_every_row_names_a_key_the_files_have() -> None:
    assert stale_rows(PAGE, ROOT / "conf") == []


def test_every_default_shown_in_code_is_the_files() -> None:
    assert wrong_defaults(PAGE, ROOT / "conf") == []


def test_every_group_lists_all_its_choices() -> None:
    (overview,) = [t for t in tables(PAGE) if t.header[:2] == ["group", "choices"]]
    rows = zip(overview.column("group"), overview.column("choices"), strict=True)
    choices = {code_spans(group)[0]: set(code_spans(cell)) for group, cell in rows}
    grouped = [f for f in config_files(ROOT / "conf") if f.group]
    assert set(choices) == {f.group for f in grouped}
    assert [f.path.name for f in grouped if f.path.stem not in choices[f.group]] == []


def test_a_new_renamed_or_changed_key_is_found(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "optimizer").mkdir(parents=True)
    (conf / "optimizer" / "adamw.yaml").write_text("lr: 1.0e-3\nschedule:\n  _target_: x.Y\n  warmup: 3\n")
    (conf / "train.yaml").write_text("defaults:\n  - optimizer: adamw\nseed: 1\n")
    page = tmp_path / "configuration.md"
    page.write_text(
        "## `conf/optimizer/`\n\n| key | default | meaning |\n|---|---|---|\n"
        "| `optimizer.lr` | `1.0e-4` | |\n| `optimizer.schedule` | | |\n| `optimizer.decay` | | renamed |\n"
        "\n## `conf/train.yaml`\n\n| key | default | meaning |\n|---|---|---|\n| `seed` | `1` | |\n"
    )
    assert missing_rows(page, conf) == ["optimizer/adamw.yaml: optimizer.schedule.warmup"]
    assert stale_rows(page, conf) == ["`conf/optimizer/`: optimizer.decay"]
    assert wrong_defaults(page, conf) == ["`optimizer.lr`: 1.0e-4"]
