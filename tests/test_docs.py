"""The documentation's links and commands point at what exists: every relative link in the
front page, docs/, the problems' pages and benchmarks/README.md reaches a file (and, with
an #anchor, a heading of it, slugged as GitHub does); every repository file a fenced
command block names exists; the front page stays short; benchmarks/README.md names the
newest results file of each benchmark. Pure text: no network, no GPU, a second."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_LIMIT = 12288  # bytes: the front page is what it is, the two commands, the map, the links


def doc_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "benchmarks" / "README.md"]
    files += sorted((REPO / "docs").glob("*.md"))
    files += sorted((REPO / "problems").glob("**/README.md"))
    return [f for f in files if f.is_file()]


FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)$")


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(info string, lines) of every fenced code block."""
    blocks, lines, current, info, fence = [], text.splitlines(), None, "", ""
    for line in lines:
        match = FENCE.match(line)
        if current is None:
            if match:
                current, info, fence = [], match["info"].strip(), match["fence"]
        elif match and match["fence"].startswith(fence[0]) and len(match["fence"]) >= len(fence) \
                and not match["info"].strip():
            blocks.append((info, current))
            current = None
        else:
            current.append(line)
    return blocks


def outside_fences(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, inside, fence = [], False, ""
    for line in text.splitlines():
        match = FENCE.match(line)
        if match and (not inside or (match["fence"].startswith(fence[0]) and not match["info"].strip())):
            inside, fence = not inside, match["fence"]
            continue
        if not inside:
            out.append(line)
    return out


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code spans, where links live."""
    return "\n".join(re.sub(r"(`+)(?:(?!\1).)+?\1", "", line) for line in outside_fences(text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markdown links and emphasis reduced to their text,
    lower case, punctuation other than - and _ dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a markdown file, with GitHub's -1, -2 for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in outside_fences(path.read_text()):
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match[1])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


LINK = re.compile(r"(?<!\!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text()))


def broken_links(path: Path) -> list[str]:
    """The relative links of one file that miss their file or their heading."""
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor:
            if dest.is_dir() or dest.suffix.lower() != ".md":
                broken.append(f"{target}: an anchor into a file that is not markdown")
            elif anchor.lower() not in anchors(dest):
                broken.append(f"{target}: no heading '#{anchor}' in {dest.relative_to(REPO)}")
    return broken


#: fenced blocks whose lines are commands (a `console` block: only its `$ ` lines)
COMMAND_BLOCKS = {"bash", "sh", "shell", "console"}
#: what runs create or the reader brings, not the repository
GENERATED = {"logs", "data", "saves", "eval", "export", "deploy", "stats", "children", "tables", ".venv"}
#: what a token that names a repository file ends with
FILE_SUFFIXES = (".py", ".sh", ".yaml", ".yml", ".json", ".md", ".txt", ".ini", ".cfg", ".toml")


def top_level() -> set[str]:
    return {p.name for p in REPO.iterdir() if not p.name.startswith(".git")}


def repository_paths(block: str, lines: list[str]) -> list[str]:
    """Tokens of a command block that name a repository file or folder."""
    tops, paths = top_level(), []
    for line in lines:
        if block == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        for token in re.split(r"[\s=,;:'\"()\[\]{}|&]+", line):
            token = token.rstrip(".")
            token = token[2:] if token.startswith("./") else token
            if not token or token.startswith(("-", "/", "~", "$", "http")) or "<" in token or ">" in token:
                continue
            parts = token.split("/")
            if parts[0] in GENERATED or any(re.fullmatch(r"exp(\d+|N+)", p) for p in parts):
                continue
            if "*" in token or "..." in token:
                continue
            if len(parts) > 1 and parts[0] in tops:
                paths.append(token)
            elif len(parts) == 1 and token.endswith(FILE_SUFFIXES) and re.fullmatch(r"[\w.-]+", token):
                paths.append(token)
    return paths


def missing_paths(path: Path) -> list[str]:
    missing = []
    for info, lines in fenced_blocks(path.read_text()):
        block = info.split()[0].lower() if info else ""
        if block not in COMMAND_BLOCKS:
            continue
        for token in repository_paths(block, lines):
            if not (REPO / token).exists():
                missing.append(token)
    return missing


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_a_file_and_heading(path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_repository_path_in_a_command_block_exists(path):
    assert missing_paths(path) == []


def test_the_front_page_is_short_and_keeps_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.encode()) <= README_LIMIT, f"README.md is {len(text.encode())} bytes, over {README_LIMIT}"
    first = next(lines for info, lines in fenced_blocks(text) if info.startswith("bash"))
    assert first == [
        "./setup.sh && .venv/bin/horovodrun -np 2 -H localhost:2 .venv/bin/python main.py "
        "--problem SwissCube --topology Widedepth",
        "./setup.sh && .venv/bin/python -m pytest",
    ]


def test_the_pages_exist_and_the_index_links_every_docs_page():
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"README.md"}
    assert pages, "docs/ holds no pages"
    linked = {Path(t.partition("#")[0]).name for t in links(REPO / "docs" / "README.md")}
    assert pages <= linked, f"docs/README.md does not link {sorted(pages - linked)}"
    for problem in ("SwissCube", "LINEMOD", "COCO"):
        assert (REPO / "problems" / problem / "README.md").is_file()


def test_benchmarks_readme_links_the_newest_results_file_of_each_benchmark():
    """The figures live in benchmarks/results/; the page names the newest file of each
    kind (run_all's `<machine>-<date>.md`, deploy's `deploy-<machine>-<date>.md`)."""
    newest: dict[str, tuple[str, str]] = {}
    for f in (REPO / "benchmarks" / "results").glob("*.md"):
        date = re.search(r"(\d{4}-\d{2}-\d{2})(?:-(\d+))?\.md$", f.name)
        if not date:
            continue
        kind = "deploy" if f.name.startswith("deploy-") else "run_all"
        key = (date[1], f"{int(date[2] or 0):04d}")
        if kind not in newest or key > newest[kind][0]:
            newest[kind] = (key, f.name)
    linked = {Path(t.partition("#")[0]).name for t in links(REPO / "benchmarks" / "README.md")}
    for kind, (_, name) in newest.items():
        assert name in linked, f"benchmarks/README.md does not link the newest {kind} results file {name}"


# the checker itself: a broken link, a missing heading and a missing path are found

def test_the_checks_find_what_is_broken(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "main.py").write_text("")
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## The `best.pt` choice\n")
    page = tmp_path / "docs" / "b.md"
    page.write_text(
        "# B\n\n[ok](a.md#the-bestpt-choice) [ok too](#b) [web](https://example.org/x)\n"
        "[gone](missing.md) [no heading](a.md#nowhere) `[in code](missing2.md)`\n\n"
        "```bash\n.venv/bin/python main.py --ckpt logs/x/exp0001/model.pt\n"
        ".venv/bin/python docs/nothing.py --out benchmarks/<machine>.md\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert broken_links(page) == ["missing.md: no such file", "a.md#nowhere: no heading '#nowhere' in docs/a.md"]
    assert missing_paths(page) == ["docs/nothing.py"]
    assert slug("Measured on `mini` (2 ranks, 2-core CPU)") == "measured-on-mini-2-ranks-2-core-cpu"
    assert slug("LINEMOD: ADD(-S)") == "linemod-add-s"
