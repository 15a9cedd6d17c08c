"""The documentation holds together: README.md stays a short door into docs/, every relative link of README.md
and docs/*.md reaches a file (and a heading, for `#anchor`, under the anchor GitHub and the site both give
it), and every page is in the site's nav. (`.ci/run` also builds the site with `mkdocs build --strict`.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from command_lines import ROOT
from markdown_pages import Link, anchors, links, prose_lines

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README_LIMIT = 15_000  # bytes: a door, not the manual


def test_readme_is_a_short_door() -> None:
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes (limit {README_LIMIT}); move detail into docs/"


def test_readme_links_into_the_docs_pages() -> None:
    targets = {(README.parent / link.target.partition("#")[0]).resolve() for link in links(README)}
    assert targets >= {page.resolve() for page in PAGES if page.name != "index.md"}


def broken(link: Link, page: Path) -> str | None:
    """Why `link` (written in `page`) reaches nothing, or None when it reaches its file and heading."""
    path, _, anchor = link.target.partition("#")
    target = (page.parent / path).resolve() if path else page
    if not target.is_file():
        return f"{link.source}: {link.target}: no such file"
    if anchor and anchor not in anchors(target):
        return f"{link.source}: {link.target}: no heading has #{anchor} on both GitHub and the site"
    return None


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    problems = [broken(link, page) for link in links(page) if link.relative]
    assert not [p for p in problems if p is not None]


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## Loggers: TensorBoard, CSV, MLflow, W&B\n\n## a - b\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#loggers-tensorboard-csv-mlflow-wb) [gone](missing.md) [bad](other.md#nowhere)\n"
        "[differs on GitHub](other.md#a-b) `[in code](missing.md)`\n```\n[in a block](missing.md)\n```\n"
    )
    problems = [broken(link, page) for link in links(page)]
    assert [p.split(": ")[1] if p else None for p in problems] == [
        None, "missing.md", "other.md#nowhere", "other.md#a-b",
    ]  # fmt: skip


def test_every_page_is_in_the_nav_and_has_one_title() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav: list) -> list[str]:
        return [p for item in nav for v in item.values() for p in (pages(v) if isinstance(v, list) else [v])]

    assert sorted(pages(config["nav"])) == sorted(p.name for p in PAGES)
    for page in PAGES:
        titles = [line for _, line in prose_lines(page.read_text()) if line.startswith("# ")]
        assert page.read_text().startswith("# ") and len(titles) == 1, page.name
