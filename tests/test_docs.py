"""The documentation site (mkdocs.yml, docs/) builds without a warning, and its generated parts
hold what the code holds: every config key, the Python API, every CLI command and the bad-input
cases."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rcnnlab.config import config_keys

from .test_bad_inputs import CASES

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("rcnnlab_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """`mkdocs build --strict` into a temporary folder (as `make docs` does, without network)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "WARNING" not in log, log
    return out


def _text(page: Path) -> str:
    """A built page's visible text, tags stripped."""
    html = re.sub(r"<script.*?</script>", " ", page.read_text(), flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_configuration_reference_lists_every_key(site):
    text = (site / "configuration" / "index.html").read_text()
    sections = {"data", "model", "augment", "train", "eval", "data.synth"}
    keys = [k for k in config_keys() if k not in sections and not k.startswith("plan.")]
    missing = [k for k in keys if f"<code>{k}</code>" not in text]
    assert not missing, f"keys missing from the configuration reference: {missing}"
    assert "Values are written as on the command line" in text  # the generated preamble
    assert "generated when the site is built" not in text  # the raw file's note was replaced


def test_the_api_page_is_generated_from_the_docstrings(site):
    html = (site / "python-api" / "index.html").read_text()
    for anchor in ("rcnnlab.Detector", "rcnnlab.Detector.load", "rcnnlab.Detector.predict",
                   "rcnnlab.detector.Result", "rcnnlab.detector.Result.plot", "rcnnlab.api",
                   "rcnnlab.api.configure", "rcnnlab.api.train", "rcnnlab.api.evaluate",
                   "rcnnlab.api.predict", "rcnnlab.export"):
        assert f'id="{anchor}"' in html, anchor
    assert "Detect on" in _text(site / "python-api" / "index.html")  # a docstring's words


def test_the_cases_table_is_generated_from_the_bad_input_tests(site):
    hooks = _hooks()
    assert hooks.bad_input_cases() == [(c.name, c.outcome) for c in CASES]
    counts = Counter(c.outcome for c in CASES)
    text = _text(site / "reliability" / "index.html")
    assert "generated when the site is built" not in text
    assert (f"Totals: {len(CASES)} cases, {counts['error']} one-line errors, "
            f"{counts['warning']} counted warnings, {counts['handled']} handled") in text
    html = (site / "reliability" / "index.html").read_text()
    rows = re.findall(r"<tr>\s*<td[^>]*>(\d+)</td>", html)
    assert [int(r) for r in rows] == list(range(1, len(CASES) + 1))


def test_equations_are_written_for_mathjax(site):
    html = (site / "methods" / "index.html").read_text()
    assert html.count('class="arithmatex"') >= 10


def test_every_command_is_documented():
    import typer

    from rcnnlab.cli import app

    text = (DOCS / "cli.md").read_text()
    group = typer.main.get_command(app)
    names = []
    for name, command in group.commands.items():
        subs = getattr(command, "commands", None)
        names += [f"rcnnlab {name} {sub}" for sub in subs] if subs else [f"rcnnlab {name}"]
    missing = [n for n in names if f"`{n}" not in text]
    assert not missing, f"commands missing from docs/cli.md: {missing}"


def test_the_readme_is_one_screen_and_points_to_the_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    assert "make docs" in text and "mkdocs serve" in text
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), link


def test_product_text_cites_no_issues():
    """User-facing text describes the product, never its development history."""
    files = [ROOT / "README.md", *DOCS.rglob("*.md"), *(ROOT / "benchmarks").glob("*.py"),
             *[p for p in (ROOT / "src" / "rcnnlab").rglob("*")
               if p.suffix in (".py", ".md", ".yaml", ".html")]]
    pattern = re.compile(r"issue [0-9]+|the issue", re.I)
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files
             for m in pattern.finditer(p.read_text(encoding="utf-8", errors="replace"))]
    assert not found, found
