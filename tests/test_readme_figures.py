"""Every performance figure in the README comes from benchmarks/results.json (tools/readme_figures.py)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = json.loads((ROOT / "benchmarks" / "results.json").read_text())
spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "tools" / "readme_figures.py")
readme_figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_figures)

# A number with a unit of speed, memory or relative cost ("3.7 images/s", "15 GiB", "17 % faster", ...).
# Memory is written in GiB throughout; decimal GB / MB are download sizes, which come from the manifests
# (checked against DATA-SOURCES.md by tests/test_download.py), not performance figures.
PERFORMANCE = re.compile(
    r"\d[\d.,]*\s*(?:images/s|img/s|GiB|ms\b|%\s*(?:faster|slower|cheaper|of)|x\s+(?:faster|slower))"
)


def _block() -> str:
    text = README.read_text()
    start, end = text.index(readme_figures.START), text.index(readme_figures.END)
    return text[start : end + len(readme_figures.END)]


def _recorded(node) -> list[float]:
    """Every number in results.json."""
    if isinstance(node, dict):
        return [x for v in node.values() for x in _recorded(v)]
    if isinstance(node, list):
        return [x for v in node for x in _recorded(v)]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return [float(node)]
    return []


def test_readme_table_is_the_one_written_from_results_json():
    assert _block() == readme_figures.render(RESULTS), "run: python tools/readme_figures.py"


def test_every_figure_in_the_table_is_a_recorded_value():
    """Read independently of the tool: each number of the figure column is a value of results.json at the
    shown precision, as it is, in percent, or MiB shown in GiB."""
    recorded = _recorded(RESULTS)
    candidates = recorded + [100 * x for x in recorded] + [x / 1024 for x in recorded]
    rows = [
        line.split(" | ") for line in _block().splitlines() if line.startswith("| ") and "---" not in line
    ]
    figures = [cells[1] for cells in rows[1:]]  # the header row says "figure"
    assert len(figures) >= 10
    for cell in figures:
        cell = re.sub(r"`[^`]*`|\(ViT-B/16\)|\(RN50\)", "", cell)  # settings and model names are not figures
        numbers = re.findall(r"\d+(?:\.\d+)?", cell)
        assert numbers, cell
        for token in numbers:
            digits = len(token.replace(".", "").lstrip("0"))
            shown = {f"{x:#.{max(digits, 1)}g}".rstrip(".") for x in candidates}
            assert token in shown, f"{token} in {cell!r} is not in benchmarks/results.json"


def test_header_names_the_recorded_run():
    header = _block().splitlines()[1]
    machine = RESULTS["machine"]
    assert f"commit {machine['git']}" in header and machine["date"][:10] in header
    assert f"{RESULTS['total_s'] / 60:.1f} minutes" in header


def _soak_block() -> str:
    text = README.read_text()
    return text[text.index("<!-- soak table -->") : text.index("<!-- /soak table -->")]


def test_no_performance_figure_outside_the_generated_table():
    outside = README.read_text().replace(_block(), "").replace(_soak_block(), "")
    assert PERFORMANCE.findall(outside) == []


def test_the_soak_figures_are_the_recorded_ones():
    """Every GiB figure of the app's memory soak is a recorded value (or the issue's 2.5 GiB target)."""
    soak = json.loads((ROOT / "benchmarks" / "results_soak.json").read_text())
    recorded = {f"{v:.2f}" for run in ("jpeg", "png") for k, v in soak[run].items() if k.endswith("_gib")}
    figures = re.findall(r"(\d+\.\d+) GiB", _soak_block())
    assert len(figures) == 9 and set(figures) <= recorded | {"2.5"}, (figures, recorded)
    rows = [line for line in _soak_block().splitlines() if line.startswith(("| JPEG", "| PNG"))]
    for row, run in zip(rows, ("jpeg", "png")):
        expected = [
            f"{soak[run][k]:.2f} GiB"
            for k in ("rss_at_start_gib", "rss_after_warmup_gib", "rss_peak_gib", "rss_idle_after_gib")
        ]
        assert [c.strip() for c in row.split("|")[3:7]] == expected, row
        assert f"+{soak[run]['idle_minus_warm_mib']} MiB" in row and soak[run]["target_met"]


def test_a_hand_edited_figure_is_found(tmp_path):
    """The check that guards the README: a changed figure makes --check fail."""
    edited = json.loads(json.dumps(RESULTS))
    edited["benchmarks"]["training"]["ratios"]["cache_vs_recompute[RN50]"] = 9.17
    assert readme_figures.render(edited) != _block()
    assert "9.17 (RN50)" in readme_figures.render(edited)
    assert PERFORMANCE.findall("about 3.7 images/s; ~17 % faster; 80 % of a matmul; 15.4 GiB") == [
        "3.7 images/s",
        "17 % faster",
        "80 % of",
        "15.4 GiB",
    ]
