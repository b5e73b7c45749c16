"""The reference page is generated from the code: it must say what the code says."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_reference_page_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("make_reference", DOCS / "make_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "reference.md").read_text() == module.page(), (
        "docs/reference.md is stale: python docs/make_reference.py > docs/reference.md"
    )


# -- README and docs/: short, current, every link resolves -----------------------------------
REPO = DOCS.parent
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks (a `# comment` in a bash
    block is no heading, a `[x](y)` in Python no link)."""
    lines, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            lines.append(line)
    return lines


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped (`-` and
    `_` kept), spaces as `-`; a repeated heading gets -1, -2, ..."""
    anchors: set[str] = set()
    count: dict[str, int] = {}
    for line in _prose(page.read_text()):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = count.get(slug, 0)
        count[slug] = n + 1
        anchors.add(f"{slug}-{n}" if n else slug)
    return anchors


def _links(page: Path) -> list[str]:
    """Every link target of a page's prose, inline code left out."""
    text = "\n".join(re.sub(r"`[^`]*`", "", line) for line in _prose(page.read_text()))
    return LINK.findall(text)


def test_every_relative_link_in_readme_and_docs_resolves() -> None:
    """To a file or directory of the repository, and to a heading where it names one."""
    broken = []
    for page in PAGES:
        for target in _links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_link_check_sees_a_broken_link_and_a_broken_anchor(tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A title, with `code` — and more\n\n## A title, with `code` — and more\n\n"
        "[ok](#a-title-with-code--and-more) [ok too](#a-title-with-code--and-more-1) "
        "[gone](missing.md) `[in code](nowhere.md)`\n\n```bash\n# not a heading\n```\n"
    )
    assert _anchors(page) == {"a-title-with-code--and-more", "a-title-with-code--and-more-1"}
    assert _links(page) == [
        "#a-title-with-code--and-more", "#a-title-with-code--and-more-1", "missing.md"
    ]  # fmt: skip


def test_the_readme_is_short_and_names_no_issue_numbers() -> None:
    """A newcomer reads it through: at most ~250 lines, the two-command quick start at the
    top, no issue numbers (what a round changed is said, with its date, in docs/)."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "make demo" in text[:2000] and "make test" in text[:2000]
    for page in PAGES:
        found = re.findall(r"\b[Ii]ssues? \d+|\(#\d+\)", page.read_text())
        assert not found, f"{page.name}: {found}"


def test_every_measured_table_keeps_its_section_in_the_results() -> None:
    """The results page has a section per benchmark, each naming the command that repeats it
    and the date it was measured."""
    text = (DOCS / "results.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(sections) >= 10
    for section in sections:
        title = section.splitlines()[0]
        assert "`" in section and re.search(r"20\d\d-\d\d-\d\d", section), title
