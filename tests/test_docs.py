"""The README a newcomer can take in, and the docs/ pages it links to.

The README leads with what dogpile is, the two commands and the first
example; the reference material is in docs/.  These tests keep it that way:
the README stays short, every relative link in it and in docs/ reaches a file
(and a heading, when it names one), every page is reachable from the README,
and the test command .ci/run reads out of the README is where .ci/run looks.
Like the README checks in test_packaging.py, they need the source tree.
"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")

# The marker .ci/run's awk looks for; the first line after it that starts
# with "python" (leading spaces stripped) is run as the test command.
MARKER = "<!-- test-command: .ci/run runs the next line exactly -->"


def _require_source_tree():
    if not os.path.exists(README):
        pytest.skip(
            "README.md is not beside tests/ (a run from a copy of the tests against an installed "
            "wheel); the source-tree runs of .ci/run check it"
        )


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _pages():
    """README.md and every docs/*.md, as absolute paths."""
    _require_source_tree()
    assert os.path.isdir(DOCS), "no docs/ beside README.md"
    docs = sorted(os.path.join(DOCS, n) for n in os.listdir(DOCS) if n.endswith(".md"))
    assert docs, "docs/ holds no .md page"
    return [README, *docs]


def _without_code(text):
    """The text outside fenced blocks and inline code spans."""
    kept, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line)
    return re.sub(r"`[^`]*`", "", "\n".join(kept))


def _links(text):
    """The targets of the [text](target) links outside code."""
    return re.findall(r"\]\(([^)\s]+)\)", _without_code(text))


def _anchors(text):
    """GitHub's anchors for the headings of a markdown text."""
    seen, anchors, fenced = {}, set(), False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = re.match(r"#{1,6} (.*)", line)
        if fenced or not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _is_external(target):
    return re.match(r"[a-z][a-z0-9+.-]*:", target) is not None


def test_readme_is_short():
    _require_source_tree()
    n = len(_read(README).split("\n")) - 1
    assert n < 300, f"README.md has {n} lines; move reference material into docs/ (under 300)"


def test_every_relative_link_resolves():
    broken = []
    for page in _pages():
        text = _read(page)
        for target in _links(text):
            if _is_external(target):
                continue
            path, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            where = f"{os.path.relpath(page, ROOT)}: ({target})"
            if not os.path.exists(dest):
                broken.append(f"{where}: no {os.path.relpath(dest, ROOT)}")
            elif anchor and dest.endswith(".md") and anchor not in _anchors(_read(dest)):
                broken.append(f"{where}: no heading #{anchor} in {os.path.relpath(dest, ROOT)}")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    pages = _pages()
    reached, todo = {README}, [README]
    while todo:
        page = todo.pop()
        for target in _links(_read(page)):
            path = target.partition("#")[0]
            if _is_external(target) or not path.endswith(".md"):
                continue
            dest = os.path.normpath(os.path.join(os.path.dirname(page), path))
            if dest in pages and dest not in reached:
                reached.add(dest)
                todo.append(dest)
    unreached = sorted(os.path.relpath(p, ROOT) for p in pages if p not in reached)
    assert not unreached, f"not linked from README.md (directly or through docs/): {unreached}"


def test_the_test_command_is_where_ci_reads_it():
    _require_source_tree()
    lines = _read(README).split("\n")
    marked = [n for n, s in enumerate(lines) if "<!-- test-command" in s]
    assert len(marked) == 1, f"README.md has {len(marked)} test-command markers, not one"
    (i,) = marked
    assert lines[i].strip() == MARKER
    # The marker, the fence, then the command: the line .ci/run's awk takes
    # (the first one after the marker starting with "python").
    assert lines[i + 1].strip() == "```sh", lines[i + 1]
    command = lines[i + 2]
    assert command.lstrip().startswith("python"), command
    after = [s for s in lines[i + 1 :] if re.match(r" *python", s)]
    assert after[0] == command
    assert "python -m pytest" in command, command
