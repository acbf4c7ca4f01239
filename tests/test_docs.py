"""The docs: the generated configuration reference is current, the README stays a short entry,
and every docs page a docstring or page cites exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loraexp.config.reference import render_reference

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current():
    assert (ROOT / "docs" / "configuration.md").read_text() == render_reference(), (
        "docs/configuration.md is stale: run .venv/bin/python scripts/gen_config_reference.py")


def test_readme_is_a_short_entry():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def _cited_pages() -> list[tuple[str, str, str | None]]:
    """``(citing file, docs page, section or None)`` for every ``docs/<page>.md`` citation in the
    package's docstrings and comments."""
    cites = []
    for path in sorted((ROOT / "loraexp").rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r'docs/([a-z-]+\.md)(?:, "([^"]+)")?', text):
            cites.append((str(path.relative_to(ROOT)), match.group(1), match.group(2)))
    return cites


@pytest.mark.parametrize("source, page, section", _cited_pages())
def test_docstring_citations_resolve_inside_the_repository(source, page, section):
    doc = ROOT / "docs" / page
    assert doc.is_file(), f"{source} cites docs/{page}, which does not exist"
    if section:
        headings = re.findall(r"^#+ (.+)$", doc.read_text(), flags=re.M)
        assert section in headings, f"{source} cites section {section!r} of docs/{page}; headings: {headings}"


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+|CHANGELOG\.md)", readme):
        assert (ROOT / target).is_file(), target
