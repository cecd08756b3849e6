"""The record's page as blocks, and its two renderings: Markdown (`render_markdown`) and one
self-contained HTML page (`render_html`, the Jinja2 template `templates/record.html` with its
stylesheet `templates/record.css` inlined, figures as base64 data URIs). Both are rendered from
the same blocks, so they never disagree.

In block text, Markdown's `code` and **bold** spans are the only markup; HTML renders them as
<code> and <b>.
"""

from __future__ import annotations

import base64
import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup, escape


@dataclass(frozen=True)
class Heading:
    level: int  # 1: the page title; 2: a section (listed in the HTML page's navigation)
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]  # all blank: a key-value table (no header row in HTML)
    rows: list[list[str]]

    @property
    def numeric(self) -> list[bool]:
        """Columns after the first whose cells all start with a number (right-aligned)."""
        return [i > 0 and all(_NUMBER.match(r[i].split(" ")[0]) for r in self.rows if r[i])
                for i in range(len(self.header))]


@dataclass(frozen=True)
class Code:
    text: str  # YAML


@dataclass(frozen=True)
class RecordFigure:
    """A PNG of the record and its caption."""

    path: Path
    caption: str


Block = Heading | Paragraph | Table | Code | RecordFigure

_NUMBER = re.compile(r"^[-+]?[\d,.]+( ?(%|\(.*\)|[a-zA-Z/ ]+))?$|^n/a$")


# ------------------------------------------------------------------ Markdown
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block], base: Path) -> str:
    """Markdown of the blocks; figures are linked relative to `base` (the page's folder)."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            out += [block.text, ""]
        elif isinstance(block, Code):
            out += ["```yaml", block.text.rstrip("\n"), "```", ""]
        elif isinstance(block, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            out.append("| " + " | ".join("---:" if r else "---" for r in block.numeric) + " |")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("")
        elif isinstance(block, RecordFigure):
            rel = Path(os.path.relpath(block.path, base)).as_posix()
            out += [f"![{block.path.stem}]({rel})", "", f"*{block.caption}*", ""]
    return "\n".join(out)


# ------------------------------------------------------------------ HTML
def _inline(text: str) -> Markup:
    """Escaped HTML of a line with Markdown's `code` and **bold** spans."""
    html = str(escape(text))
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)
    return Markup(re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", html))


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("rcnnlab.reporting", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters.update(inline=_inline, anchor=_anchor, data_uri=_data_uri)
    env.globals.update(Heading=Heading, Paragraph=Paragraph, Table=Table, Code=Code,
                       RecordFigure=RecordFigure)
    env.tests["kind"] = isinstance
    return env


def render_html(blocks: Sequence[Block], title: str) -> str:
    """One self-contained HTML page of the blocks: inline CSS, figures as base64 data URIs,
    no reference to any other file or address."""
    sections = [b.text for b in blocks if isinstance(b, Heading) and b.level == 2]
    return _environment().get_template("record.html").render(title=title, blocks=blocks,
                                                              sections=sections)
