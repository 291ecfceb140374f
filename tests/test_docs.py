"""The documentation: the README's first screen holds the two commands CI and a new user run, and every relative
link of README.md, RESULTS.md and docs/ leads to a file of the repository."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRST_SCREEN = 45  # lines


def test_the_first_screen_of_the_readme_holds_the_main_command_and_the_test_command():
    first = "\n".join((REPO / "README.md").read_text().splitlines()[:FIRST_SCREEN])
    assert "bash scripts/setup.sh && PATH=$PWD/.venv/bin:$PATH snakemake --cores all results/table.csv" in first
    assert "bash scripts/setup.sh --tests && .venv/bin/python -m pytest -ra" in first
    ci = (REPO / ".ci" / "run").read_text()  # CI runs exactly the README's test command
    assert "bash scripts/setup.sh --tests" in ci and "./.venv/bin/python -m pytest -ra" in ci


def test_every_relative_link_of_the_documentation_leads_to_a_file():
    pages = [REPO / "README.md", REPO / "RESULTS.md", *sorted((REPO / "docs").glob("*.md"))]
    links = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            links += 1
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to {target}, which is missing"
    assert links >= 10


def test_the_config_reference_marks_exactly_the_keys_this_project_added():
    """docs/configs.md stars (*) a key or a section that the original code's reference does not have: each key the
    settings table declares `new` is starred (itself or its section), and each star names a new key or section."""
    from steermoe.declare.settings import TABLE

    rows = [line for line in (REPO / "docs" / "configs.md").read_text().splitlines() if line.startswith("| `")]
    named = [re.findall(r"`([a-z_0-9]+)`(\*)?", row.split(" | ")[0]) for row in rows]
    starred = {name for row in named for name, star in row if star}
    new = [key for key in TABLE if key.new]
    unmarked = [key.path for key in new if key.name not in starred and key.section not in starred]
    assert not unmarked, f"docs/configs.md does not star these new keys: {unmarked}"
    stray = starred - {key.name for key in new} - {key.section for key in new}
    assert not stray, f"docs/configs.md stars keys that are the original code's: {sorted(stray)}"
