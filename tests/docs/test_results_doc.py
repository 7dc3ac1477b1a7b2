"""The README's results come from the committed data: the tables are the ones
dev/results_tables.py prints from results/*.json, and no other figure stands in that section."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from dev import results_tables  # noqa: E402


def _section(text):
    return text.split("## Results on the built-in data", 1)[1].split("\n## ", 1)[0]


def _figures(text):
    return set(re.findall(r"[+-]?\d+\.\d+", text))


def test_the_readme_tables_are_the_generated_ones():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "dev/results_tables.py"), "--check"],
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


def _bf16_figures():
    """Every figure the bfloat16-accuracy paragraph may quote, from results/ablation_cpu_bf16.json."""
    from dev.records.ablation import paired_difference, summarize_metric

    data = results_tables.load("ablation_cpu_bf16.json")
    by = {}
    for r in data["runs"]:
        by.setdefault(r["name"], {})[r["seed"]] = r["metrics"]["AP"]
    figs = set()
    for runs in by.values():
        s = summarize_metric(list(runs.values()))
        figs |= {f"{s['mean']:.2f}", f"{s['std']:.2f}"} | {f"{v:.2f}" for v in runs.values()}
    d = paired_difference(by["bf16"], by["baseline"])
    figs |= {f"{d['mean']:+.2f}", f"{d['ci'][0]:+.2f}", f"{d['ci'][1]:+.2f}"}
    return figs


def _plain(figs):
    return {f.lstrip("+") for f in figs}


def test_every_figure_of_the_performance_page_comes_from_committed_data():
    text = open(os.path.join(ROOT, "docs", "performance.md")).read()
    generated = results_tables.generate_bench()
    assert results_tables.bench_files(), "no committed bench file (results/bench/*.json)"
    assert results_tables.block_of(text, "bench", "docs/performance.md") == generated
    allowed = _plain(_figures(generated)) | _plain(_bf16_figures()) | {"0.5"}  # 0.5: an IoU in a definition
    stray = sorted(_plain(_figures(text)) - allowed)
    assert not stray, f"figures in docs/performance.md that no committed data give: {stray}"
    # the checks can fail: a hand-edited ratio in the table, or a figure added to the prose
    ratio = re.search(r"\| train_iter_ratio +\| +(\d+\.\d+)", generated).group(1)
    edited = text.replace(ratio, f"{float(ratio) + 0.1:.3f}", 1)
    assert results_tables.block_of(edited, "bench", "docs/performance.md") != generated
    assert _plain(_figures(text.replace("## OHEM's cost", "## OHEM's cost\n\nIt costs 1.234x."))) - allowed == {"1.234"}


def test_every_run_record_names_its_commit_and_processor():
    """Each run of every results/*.json names a commit (or "unknown" with the oldest commit that
    holds it) and a processor (or "unknown")."""
    import json

    missing = []
    for name in sorted(os.listdir(os.path.join(ROOT, "results"))):
        if not name.endswith(".json"):
            continue
        data = json.load(open(os.path.join(ROOT, "results", name)))
        if not isinstance(data, dict) or "runs" not in data:
            continue
        for r in data["runs"]:
            prov = r.get("provenance") or {}
            commit = prov.get("commit") or r.get("commit")
            ok_commit = bool(commit) and (commit != "unknown" or r.get("commit_at_or_before")) \
                and not str(commit).startswith("earlier")
            ok_proc = bool((prov.get("processor") or {}).get("model") or r.get("processor"))
            if not (ok_commit and ok_proc):
                missing.append(f"{name}: {r.get('name')} seed {r.get('seed')}")
    assert not missing, missing


def _config_figures():
    """Figures the recipe section may quote: the values (not the comments) of the built-in configs."""
    figs = set()
    folder = os.path.join(ROOT, "configs", "builtin")
    for name in os.listdir(folder):
        if name.endswith(".yaml"):
            text = "\n".join(line.split("#", 1)[0] for line in open(os.path.join(folder, name)))
            figs |= _figures(text)
    return figs


def test_every_figure_of_the_results_page_comes_from_the_data():
    """docs/results_builtin.md: the tables are dev/results_tables.py's, and outside them the
    page quotes no figure but the recipe's config values."""
    text = open(os.path.join(ROOT, "docs", "results_builtin.md")).read()
    generated = results_tables.generate_results_page()
    assert results_tables.block_of(text, "runs", "docs/results_builtin.md") == generated
    allowed = _plain(_figures(generated)) | _plain(_config_figures())
    stray = sorted(_plain(_figures(text)) - allowed)
    assert not stray, f"figures in docs/results_builtin.md that no committed data give: {stray}"
    # the checks can fail: a hand-edited mean in a table, or a figure added to the prose
    first = re.search(r"\d+\.\d+ ± \d+\.\d+", generated).group(0)
    head, runs = text.split("<!-- runs:begin -->", 1)
    edited = head + "<!-- runs:begin -->" + runs.replace(first, first.replace(first[:5], f"{float(first[:5]) + 1:.2f}"), 1)
    assert results_tables.block_of(edited, "runs", "docs/results_builtin.md") != generated
    assert results_tables.block_of(text, "summary", "docs/results_builtin.md") == results_tables.generate()
    assert _plain(_figures(text.replace("## Reading them", "## Reading them\n\nLibra adds 7.77 AP."))) \
        - allowed == {"7.77"}


def test_every_figure_of_the_retinanet_investigation_comes_from_the_data():
    """docs/retinanet_investigation.md: its table is dev/results_tables.py's, and the prose
    around it quotes no figure but the recipe's config values."""
    text = open(os.path.join(ROOT, "docs", "retinanet_investigation.md")).read()
    generated = results_tables.generate_retinanet_trials()
    where = "docs/retinanet_investigation.md"
    assert "right class" in generated and results_tables.block_of(text, "trials", where) == generated
    allowed = _plain(_figures(generated)) | _plain(_config_figures())
    stray = sorted(_plain(_figures(text)) - allowed)
    assert not stray, f"figures in {where} that no committed data give: {stray}"
    # the checks can fail: an edited AP in the table, or a figure added to the prose
    first = re.search(r"\| (\d+\.\d+) \(", generated).group(1)
    edited = text.replace(f"| {first} (", f"| {float(first) + 1:.2f} (", 1)
    assert results_tables.block_of(edited, "trials", where) != generated
    assert _plain(_figures(text + "\nThe head adds 3.33 AP.\n")) - allowed == {"3.33"}
    # whole numbers of two digits or more (counts, iterations) too
    ints = _integers(generated) | _integers("\n".join(
        line.split("#", 1)[0] for name in os.listdir(os.path.join(ROOT, "configs", "builtin")) if name.endswith(".yaml")
        for line in open(os.path.join(ROOT, "configs", "builtin", name))))
    assert not sorted(_integers(text) - ints), sorted(_integers(text) - ints)
    assert _integers(text + "\npositive anchors: 4242 per image.\n") - ints == {"4242"}


def _integers(text):
    return set(re.findall(r"(?<![\w.])\d{2,}(?![\w.])", text.replace(",", "")))


def test_every_figure_of_the_tools_page_comes_from_the_data():
    """docs/tools.md: its measured tables (negatives by IoU, anchor coverage) are
    dev/results_tables.py's, and the page quotes no other measured figure."""
    text = open(os.path.join(ROOT, "docs", "tools.md")).read()
    where = "docs/tools.md"
    blocks = {"sampling": results_tables.generate_sampling(), "anchors": results_tables.generate_anchor_coverage()}
    for tag, generated in blocks.items():
        assert "results/" in generated and results_tables.block_of(text, tag, where) == generated, tag
    allowed = _plain(set().union(*(_figures(g) for g in blocks.values()))) | _plain(_config_figures())
    stray = sorted(_plain(_figures(text)) - allowed)
    assert not stray, f"figures in {where} that no committed data give: {stray}"
    assert _plain(_figures(text + "\nA third of the small boxes: 33.3%.\n")) - allowed == {"33.3"}


def test_the_readme_plot_shows_the_data_of_the_current_verdicts():
    """docs/verdicts.png carries the values it plots (its Description text); they are the
    current pairs' per-seed AP from the run records."""
    from PIL import Image

    with Image.open(os.path.join(ROOT, results_tables.PLOT)) as im:
        plotted = json.loads(im.text["Description"])
    want = [{"label": p["label"], "class": p["class"], "seeds": p["seeds"], "base": p["base"], "variant": p["variant"]}
            for p in results_tables._current_pairs()]
    assert plotted == want and len(want) >= 5
