"""The README and docs read as a product: no development-process words, links that resolve, tables
and images that render on GitHub.

Fast and offline: it reads the files git would commit (tracked, plus untracked files that are not
ignored) and nothing else.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".txt"}
TEXT_NAMES = {"Makefile", "Dockerfile"}
DATA_SUFFIXES = (".json", ".jsonl", ".log")

# Words of how the work was organised rather than what the project is. The words are split so that
# this file does not match its own patterns.
_S = "sess" "ions?"
_ORDINALS = ("first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth"
             r"|\d+(?:st|nd|rd|th)?")
PROCESS_WORDS = [
    re.compile(rf"\b(?:{_ORDINALS})[- ]{_S}\b", re.IGNORECASE),
    re.compile(rf"\b{_S}[ _-]?\d+\b", re.IGNORECASE),
    re.compile(rf"\b(?:this|that|next|previous|last|each|every|one|a|the same|later|earlier) (?:working )?{_S}\b",
               re.IGNORECASE),
    re.compile(r"\biss" r"ue[ #-]*\d+\b", re.IGNORECASE),
    re.compile(r"\b(?:GPU |device )?lea" r"ses?\b", re.IGNORECASE),
]


@cache
def repo_files() -> tuple[str, ...]:
    """What a commit of the work tree would hold: tracked files and untracked ones git does not ignore."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return tuple(sorted({p for p in out.split("\0") if p and (ROOT / p).exists()}))


def is_data(path: str) -> bool:
    """Recorded outputs and checkpoints: their text is what a program wrote, not prose."""
    parts = path.split("/")
    return (path.endswith(DATA_SUFFIXES)
            or path.startswith("docs/benchmarks/")
            or (parts[0] == "candidates" and len(parts) > 3)
            or (parts[:2] == ["dgr2", "model_store"] and len(parts) > 4))


def is_text(path: str) -> bool:
    p = Path(path)
    return p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES


def markdown_files() -> list[str]:
    return [p for p in repo_files() if p.endswith(".md") and not is_data(p)]


def process_word_hits(name: str, lines: list[str]) -> list[str]:
    hits = []
    for number, line in enumerate(lines, 1):
        for pattern in PROCESS_WORDS:
            m = pattern.search(line)
            if m:
                hits.append(f"{name}:{number}: {m.group(0)!r} in {line.strip()[:120]!r}")
    return hits


def test_no_process_words_in_file_or_folder_names():
    hits = [f"{path}: {hit.split(': ', 1)[1].split(' in ')[0]}"
            for path in repo_files() for hit in process_word_hits(path, [path])]
    assert not hits, "file or folder names that say how the work was organised:\n" + "\n".join(hits)


def test_no_process_words_in_text_files():
    hits = []
    for path in repo_files():
        if is_text(path) and not is_data(path):
            lines = (ROOT / path).read_text(encoding="utf-8", errors="replace").splitlines()
            hits += process_word_hits(path, lines)
    assert not hits, ("development-process words (numbered work rounds, issue numbers, machine loans); "
                      "say what the thing is and when (a date, a model version, an experiment):\n"
                      + "\n".join(hits))


def test_process_word_patterns():
    s, i, le = "sess" "ion", "iss" "ue", "lea" "se"  # split, as above
    bad = [f"the fifth {s}", f"Sixth-{s} results", f"docs/results/{s}10/x", f"{s} 7", f"this {s}",
           f"the previous {s}", f"one working {s}", f"{i} 3", f"{i.title()} #12", f"{i}-3", f"a GPU {le}",
           f"the {le} allows", f"12th {s}"]
    good = ['@pytest.fixture(scope="session")', "s = requests.Session()", "start_new_session=True",
            "built once per session", "release the lock", "the issue's goal"]
    assert all(process_word_hits("x", [t]) for t in bad), [t for t in bad if not process_word_hits("x", [t])]
    assert not [t for t in good if process_word_hits("x", [t])]


# --------------------------------------------------------------------------- Markdown structure
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_IMG_TAG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_DELIMITER = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def prose_lines(path: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate((ROOT / path).read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def links(path: str) -> list[tuple[int, bool, str, str]]:
    """(line, is_image, text, target) of every inline link and image outside code."""
    found = []
    for number, line in prose_lines(path):
        for m in _LINK.finditer(_CODE_SPAN.sub("``", line)):
            found.append((number, m.group(1) == "!", m.group(2), m.group(3)))
    return found


def table_cells(row: str) -> list[str]:
    """GitHub splits a table row on every unescaped pipe, inside code spans too."""
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return re.split(r"(?<!\\)\|", row)


def tables(path: str) -> list[tuple[int, list[str]]]:
    """(first line number, rows) of every table: a header row, a delimiter row, then body rows."""
    lines = prose_lines(path)
    found, i = [], 0
    while i < len(lines) - 1:
        number, line = lines[i]
        if "|" in line and _DELIMITER.match(lines[i + 1][1]) and lines[i + 1][0] == number + 1:
            rows = [line, lines[i + 1][1]]
            j = i + 2
            while j < len(lines) and lines[j][0] == lines[j - 1][0] + 1 and "|" in lines[j][1] and lines[j][1].strip():
                rows.append(lines[j][1])
                j += 1
            found.append((number, rows))
            i = j
        else:
            i += 1
    return found


def test_relative_links_and_images_resolve():
    present = set(repo_files())
    folders = {str(Path(p).parent) for p in present} | {str(parent) for p in present for parent in Path(p).parents}
    broken = []
    for path in markdown_files():
        for number, _, _, target in links(path):
            if re.match(r"^(https?:|mailto:|#)", target):
                continue
            rel = target.split("#", 1)[0].split("?", 1)[0]
            resolved = (ROOT / path).parent.joinpath(rel).resolve()
            try:
                inside = resolved.relative_to(ROOT).as_posix()
            except ValueError:
                broken.append(f"{path}:{number}: {target} (outside the repository)")
                continue
            if inside not in present and inside.rstrip("/") not in folders:
                broken.append(f"{path}:{number}: {target}")
    assert not broken, "links to files that are not in the repository:\n" + "\n".join(broken)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; keep it at most 260 (details go to docs/)"


def test_tables_render_on_github():
    problems = []
    for path in markdown_files():
        for number, rows in tables(path):
            width = len(table_cells(rows[1]))
            if width > 8:
                problems.append(f"{path}:{number}: {width} columns (at most 8)")
            for offset, row in enumerate(rows):
                if len(table_cells(row)) != width:
                    problems.append(f"{path}:{number + offset}: {len(table_cells(row))} cells in a "
                                    f"{width}-column table (an unescaped | splits a cell)")
    assert not problems, "\n".join(problems)


def test_images_have_alt_text():
    missing = []
    for path in markdown_files():
        for number, is_image, text, target in links(path):
            if is_image and not text.strip():
                missing.append(f"{path}:{number}: {target}")
        for number, line in prose_lines(path):
            for tag in _IMG_TAG.findall(line):
                if not re.search(r'\balt\s*=\s*"[^"]*\S[^"]*"', tag):
                    missing.append(f"{path}:{number}: {tag}")
    assert not missing, "images without alt text:\n" + "\n".join(missing)


@pytest.mark.parametrize("row, cells", [("| a | `b|c` | d |", 4), ("| a | b \\| c |", 2), ("a | b", 2)])
def test_table_cells_split_as_github_does(row, cells):
    assert len(table_cells(row)) == cells
