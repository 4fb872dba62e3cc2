"""The documentation's relative links resolve, and the README stays a front page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import PAPER_RNN_COMMAND, ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
CODE = re.compile(r"`[^`\n]*`")


def relative_links(text: str) -> list[str]:
    """Targets of the markdown links and images outside code, without their #anchor; web links left out."""
    prose = CODE.sub("", FENCE.sub("", text))
    targets = [m.group(1) for m in LINK.finditer(prose)]
    return [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_link_finder_on_a_hand_written_page() -> None:
    page = ("See [design](docs/design.md#layout), ![pic](design.png) and [web](https://x.org/a.md).\n"
            "[anchor](#quick-start) `[not](code.md)`\n```\n[also not](fenced.md)\n```\n")
    assert relative_links(page) == ["docs/design.md", "design.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_to_an_existing_file(page: Path) -> None:
    missing = [t for t in relative_links(page.read_text()) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)}: broken links {missing}"


def test_readme_is_a_front_page_with_the_ci_test_command() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    assert "pip install -r requirements.txt && python -m pytest\n" in text  # .ci/run runs this line
    assert f"python main.py {PAPER_RNN_COMMAND}\n" in text  # the paper's command, verbatim
    assert "docs/design.md" in text and (ROOT / "docs" / "design.png").stat().st_size > 0
