"""The README's results come from the committed data: the tables are the ones
tools/results_tables.py prints from docs/*.json, and no other figure stands in that section."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import results_tables  # noqa: E402


def _section(text):
    return text.split("## Results on the built-in data", 1)[1].split("\n## ", 1)[0]


def _figures(text):
    return set(re.findall(r"[+-]?\d+\.\d+", text))


def test_the_readme_tables_are_the_generated_ones():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools/results_tables.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_every_figure_of_the_results_section_comes_from_the_data(tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    section = _section(text)
    generated = results_tables.generate()
    stray = sorted(_figures(section) - _figures(generated))
    assert not stray, f"figures in the README's results section that the data do not give: {stray}"
    # the checks can fail: a hand-edited figure in the table, or one added to the prose
    first = re.search(r"\d+\.\d+ ± \d+\.\d+", generated).group(0)
    edited = text.replace(first, first.replace(first[:5], f"{float(first[:5]) + 1:.2f}"), 1)
    assert results_tables.readme_block(edited) != generated
    assert _figures(_section(text.replace("None of this predicts", "Libra gains 3.14 AP. None of this predicts"))) \
        - _figures(generated) == {"3.14"}
