"""Draw homerec's layers: docs/architecture.svg and the module tree in docs/architecture.md.

The layers are the ones ``make lint`` enforces (the import-linter contract in
pyproject.toml), and each module's line is the first line of its docstring, so the picture
and the tree cannot drift from the code: ``python docs/architecture.py`` rewrites both,
``--check`` exits 1 when either is out of date (the test suite runs it).
"""

import argparse
import ast
import sys
import textwrap
import tomllib
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SVG = ROOT / "docs" / "architecture.svg"
MARKDOWN = ROOT / "docs" / "architecture.md"
TREE_START, TREE_END = "<!-- tree: written by docs/architecture.py -->", "<!-- /tree -->"
FEATURE_REPO = "feature_repo"
FEATURE_REPO_NOTE = "Feast declarations only: imports feast and training.core.constants"

SUMMARY_CHARS = 88
WIDTH, MARGIN, GAP, LINE = 960, 20, 14, 16
CHARS_PER_LINE = 0.165  # characters per pixel of box width at the module-list font size


def contract_layers() -> list[list[str]]:
    """The layers of the import-linter contract, top first; siblings (``a | b``) together."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [contract] = [c for c in config["contracts"] if c["type"] == "layers"]
    return [[name.strip() for name in layer.split("|")] for layer in contract["layers"]]


def summary(path: Path) -> str:
    """The first sentence of a module's docstring (``-`` when it has none)."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if not docstring:
        return "-"
    paragraph = " ".join(docstring.split("\n\n", 1)[0].split())
    sentence = paragraph.split(". ", 1)[0].rstrip(".").replace("``", "`")
    return (
        sentence
        if len(sentence) <= SUMMARY_CHARS
        else textwrap.shorten(sentence, SUMMARY_CHARS, placeholder=" …")
    )


def modules(layer: str) -> list[tuple[str, str]]:
    """``(module, summary)`` of every module of a layer (a package or one module)."""
    path = ROOT.joinpath(*layer.split("."))
    if path.with_suffix(".py").is_file():
        return [(layer, summary(path.with_suffix(".py")))]
    files = sorted(p for p in path.rglob("*.py") if p.name != "__init__.py")
    return [(".".join(p.relative_to(ROOT).with_suffix("").parts), summary(p)) for p in files]


def tree_markdown(layers: list[list[str]]) -> str:
    """One line per module, layer by layer, top first."""
    lines = ["```"]
    for name in (name for layer in layers for name in layer):
        members = modules(name)
        if [module for module, _ in members] == [name]:
            lines.append(f"{name.replace('.', '/') + '.py':<30} {members[0][1]}")
            continue
        lines.append(f"{name.replace('.', '/')}/")
        for module, line in members:
            relative = module.removeprefix(name + ".").replace(".", "/")
            lines.append(f"  {relative + '.py':<28} {line}")
    lines += [f"{FEATURE_REPO + '/':<30} {FEATURE_REPO_NOTE}", "```"]
    return "\n".join(lines)


def _box(x: float, y: float, width: float, title: str, body: list[str]) -> tuple[str, float]:
    """An SVG group: a rounded box with a bold title and wrapped body lines."""
    wrapped = [piece for text in body for piece in textwrap.wrap(text, int(width * CHARS_PER_LINE))]
    height = 28 + LINE * len(wrapped)
    parts = [
        f'<rect x="{x}" y="{y}" width="{width}" height="{height}" rx="6" '
        'fill="#f4f6fb" stroke="#44546a"/>',
        f'<text x="{x + 10}" y="{y + 19}" font-weight="bold">{escape(title)}</text>',
    ]
    parts += [
        f'<text x="{x + 10}" y="{y + 19 + LINE * (i + 1)}" font-size="12">{escape(text)}</text>'
        for i, text in enumerate(wrapped)
    ]
    return "\n".join(parts), height


def architecture_svg(layers: list[list[str]]) -> str:
    """The layers as stacked boxes (siblings side by side), imports pointing down."""
    inner = WIDTH - 2 * MARGIN - 40
    y, shapes = MARGIN + 24, []
    rows = [*layers, [FEATURE_REPO]]
    for index, layer in enumerate(rows):
        width = (inner - GAP * (len(layer) - 1)) / len(layer)
        heights = []
        for position, name in enumerate(layer):
            x = MARGIN + position * (width + GAP)
            if name == FEATURE_REPO:
                body = [FEATURE_REPO_NOTE]
            elif [module for module, _ in modules(name)] == [name]:
                body = [modules(name)[0][1]]
            else:
                body = [" · ".join(module.rsplit(".", 1)[-1] for module, _ in modules(name))]
            title = f"{FEATURE_REPO}/" if name == FEATURE_REPO else name
            shape, height = _box(x, y, width, title, body)
            shapes.append(shape)
            heights.append(height)
        y += max(heights)
        if index < len(rows) - 1:
            y += GAP + 8
    arrow_x = WIDTH - MARGIN - 16
    shapes.append(
        f'<line x1="{arrow_x}" y1="{MARGIN + 30}" x2="{arrow_x}" y2="{y - 10}" '
        'stroke="#44546a" stroke-width="2" marker-end="url(#down)"/>'
    )
    height = y + MARGIN
    title = "homerec layers: each imports only those below it (make lint checks it)"
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="14">',
            '<defs><marker id="down" markerWidth="10" markerHeight="10" refX="9" refY="5" '
            'orient="auto"><path d="M0,0 L9,5 L0,10 z" fill="#44546a"/></marker></defs>',
            f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
            f'<text x="{MARGIN}" y="{MARGIN + 6}" font-weight="bold">{escape(title)}</text>',
            *shapes,
            "</svg>",
            "",
        ]
    )


def with_tree(markdown: str, tree: str) -> str:
    """``markdown`` with the text between the tree markers replaced by ``tree``."""
    head, rest = markdown.split(TREE_START, 1)
    _, tail = rest.split(TREE_END, 1)
    return f"{head}{TREE_START}\n{tree}\n{TREE_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Exit 1 when a file is stale.")
    args = parser.parse_args(argv)
    layers = contract_layers()
    wanted = {
        SVG: architecture_svg(layers),
        MARKDOWN: with_tree(MARKDOWN.read_text(encoding="utf-8"), tree_markdown(layers)),
    }
    stale = [
        path
        for path, text in wanted.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python docs/architecture.py")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
