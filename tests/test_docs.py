"""The references a reader needs live in the repository, and every citation of them resolves.

Code, tests, benchmarks and READMEs cite docs/ (``docs/protocol/control.md §2.3``,
``docs/style.md §4``), never the reference notes the project started from, which are not in
the repository. Every cited docs/ file must exist and contain the cited section; docs/ keeps
the section numbers of those notes, so old citations were rewritten mechanically
(scripts/fix-citations).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOTES = ["control-protocol", "derp-disco-stun", "wireguard-dataplane", "policy-routes-sharing",
         "dns-oidc-console"]  # fmt: skip
PROTOCOL_DOCS = ["control", "derp-disco-stun", "wireguard", "policy", "dns-oidc-console"]

BANNED = [
    (re.compile(r"STYLE\.md"), "the style guide is docs/style.md"),
    (re.compile(r"/shared/"), "a path outside the repository"),
    (re.compile(r"\bspec/[\w-]+\.md"), "the reference notes are docs/protocol/*.md"),
    (re.compile(r"(?<![\w/])(?:" + "|".join(NOTES) + r")\.md"), "cite docs/protocol/<name>.md"),
    (
        re.compile(r"\b[Ss]pec(?:'s)?\s+(?:sections?\s+|§\s*)?\d"),
        "a bare section number names no document: cite docs/protocol/<name>.md §N",
    ),
    (re.compile(r"\bsection\s+\d+(?:\.\d+)*\s+of\s+the\s+spec\b"), "cite docs/ §N"),
    (re.compile(r"\bthe spec's\b|\bin the spec\b"), "name the docs/ file"),
]
CITATION = re.compile(r"\bdocs/([\w/.-]+?\.md)(?:\s*§\s*(\d+(?:\.\d+)*))?")
MARKDOWN_LINK = re.compile(r"\]\(([^)#:\s]+\.md)(?:#[^)]*)?\)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.M)


def tracked(*prefixes: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    names = out.stdout.splitlines()
    return [ROOT / n for n in names if n.startswith(prefixes) or Path(n).name == "README.md"]


def text_of(path: Path) -> str | None:
    try:
        return path.read_text()
    except (UnicodeDecodeError, FileNotFoundError):
        return None


def banned_citations(text: str) -> list[tuple[int, str, str]]:
    """(line number, offending text, why) for every citation pointing outside the repo."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        for pattern, why in BANNED:
            for m in pattern.finditer(line):
                found.append((n, m.group(0), why))
    return found


def sections(doc: Path) -> list[str]:
    return HEADING.findall(doc.read_text())


def broken_citations(text: str, base: Path) -> list[tuple[int, str]]:
    """(line number, citation) for docs/ paths or sections that do not exist. Markdown
    links are resolved against `base`, the citing file's directory."""
    bad = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in CITATION.finditer(line):
            doc = DOCS / m.group(1)
            if not doc.is_file() or (m.group(2) is not None and m.group(2) not in sections(doc)):
                bad.append((n, m.group(0)))
        for m in MARKDOWN_LINK.finditer(line):
            if not (base / m.group(1)).is_file():
                bad.append((n, m.group(0)))
    return bad


# Every file that may cite, except this one (its planted examples are meant to be wrong).
CITING = [p for p in tracked("src/", "tests/", "benchmarks/") if p != Path(__file__).resolve()]


def test_no_citation_points_outside_the_repository() -> None:
    bad = []
    for path in CITING:
        text = text_of(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT)
        bad += [f"{rel}:{n}: {what!r} ({why})" for n, what, why in banned_citations(text)]
    assert not bad, "run scripts/fix-citations, then fix what it reports:\n" + "\n".join(bad)


def test_every_docs_citation_resolves() -> None:
    bad = []
    for path in [*CITING, *sorted(DOCS.rglob("*.md"))]:
        text = text_of(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT)
        bad += [f"{rel}:{n}: {what}" for n, what in broken_citations(text, path.parent)]
    assert not bad, "citations of missing docs or sections:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", PROTOCOL_DOCS)
def test_protocol_doc_has_unique_numbered_sections(name: str) -> None:
    found = sections(DOCS / "protocol" / f"{name}.md")
    assert len(found) > 10, f"docs/protocol/{name}.md has almost no numbered sections"
    dupes = sorted({s for s in found if found.count(s) > 1})
    assert not dupes, f"docs/protocol/{name}.md numbers these sections twice: {dupes}"


def test_reference_docs_exist() -> None:
    for rel in ["architecture.md", "style.md", *(f"protocol/{n}.md" for n in PROTOCOL_DOCS)]:
        assert (DOCS / rel).is_file(), f"docs/{rel} is missing"


def test_the_checks_catch_what_they_are_for() -> None:
    """Planted bad citations are found; good ones are not (the checks cannot pass vacuously)."""
    planted = (
        "# see STYLE.md section 4\n"
        "# spec 2.3: the upgrade\n"
        "# /work/shared/spec/control-protocol.md\n"
    )
    assert [n for n, _, _ in banned_citations(planted)] == [1, 2, 3, 3]  # path + spec/ file
    assert banned_citations("# the dial (docs/protocol/control.md §2.3, docs/style.md §4)\n") == []
    assert banned_citations("# see derp-disco-stun.md 4.2\n") != []
    assert broken_citations("docs/protocol/control.md §2.3\n", ROOT) == []
    assert broken_citations("docs/protocol/control.md §99.1\n", ROOT) == [
        (1, "docs/protocol/control.md §99.1")
    ]
    assert broken_citations("see docs/nothing.md\n", ROOT) == [(1, "docs/nothing.md")]
    assert broken_citations("[x](missing.md)\n", DOCS) == [(1, "](missing.md)")]
