"""MkDocs hooks: the pages that are generated from the code, so they cannot drift from it.

- `<!-- config-reference --><!-- /config-reference -->` in a page becomes the configuration
  reference, every key of `rcnnlab.config` with its type, default, valid range and meaning
  (`rcnnlab.reporting.config_reference`);
- `<!-- bad-input-cases --><!-- /bad-input-cases -->` becomes the totals and the table of the
  bad-input cases that `tests/test_bad_inputs.py` runs (read from that file's `Case(...)`
  entries without running or importing the tests).

What stands between the markers in the page's source (a note for readers of the raw file) is
replaced.

Declared under `hooks:` in mkdocs.yml; `tests/test_docs.py` builds the site and checks both.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAD_INPUTS = ROOT / "tests" / "test_bad_inputs.py"
CASES_START, CASES_END = "<!-- bad-input-cases -->", "<!-- /bad-input-cases -->"
OUTCOMES = {"error": "one-line error", "warning": "counted warning", "handled": "handled"}


def bad_input_cases(path: Path = BAD_INPUTS) -> list[tuple[str, str]]:
    """(name, outcome) of every `Case(...)` in the file, in file order (the order of `CASES`).

    A case's name is "command: what is wrong"; its outcome "error" unless it says otherwise.
    """
    cases = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Case":
            name = ast.literal_eval(node.args[0])
            # Case(name, args, words, outcome, check): the outcome by keyword or 4th argument
            given = [k.value for k in node.keywords if k.arg == "outcome"] + node.args[3:4]
            outcome = ast.literal_eval(given[0]) if given else "error"
            cases.append((node.lineno, node.col_offset, name, outcome))
    return [(name, outcome) for *_, name, outcome in sorted(cases)]


def cases_markdown(cases: list[tuple[str, str]]) -> str:
    """The totals line and the table of the cases."""
    counts = Counter(outcome for _, outcome in cases)
    silent = len(cases) - sum(counts[o] for o in OUTCOMES)
    lines = [f"Totals: {len(cases)} cases, {counts['error']} one-line errors, "
             f"{counts['warning']} counted warnings, {counts['handled']} handled; "
             f"**{silent} silent, 0 tracebacks**.", "",
             '<details markdown="1"><summary>The cases</summary>', "",
             "| # | case | command | outcome |", "|---:|---|---|---|"]
    for number, (name, outcome) in enumerate(cases, 1):
        command, _, what = name.partition(": ")
        what = what.replace("|", "/").replace("<", "&lt;")
        lines.append(f"| {number} | {what} | `{command}` | {OUTCOMES.get(outcome, outcome)} |")
    return "\n".join([*lines, "", "</details>", ""])


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Fill the generated parts of a page in."""
    from rcnnlab.reporting import config_reference

    if config_reference.START in markdown:
        markdown = config_reference.replace_in(markdown)
    if CASES_START in markdown:
        head, _, rest = markdown.partition(CASES_START)
        _, end, tail = rest.partition(CASES_END)
        if not end:
            raise ValueError(f"{page.file.src_path}: {CASES_START} without {CASES_END}")
        markdown = f"{head}{CASES_START}\n{cases_markdown(bad_input_cases())}{CASES_END}{tail}"
    return markdown
