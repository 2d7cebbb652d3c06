"""Write the README's speed-and-memory table from benchmarks/results.json (`make bench` runs it after the
benchmarks), so that no figure in the README is typed by hand. `--check` only reports whether it is stale."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results.json"
START = (
    "<!-- figures: start (written by tools/readme_figures.py from benchmarks/results.json; do not edit) -->"
)
END = "<!-- figures: end -->"
MODELS = (("ViT-B-16", "ViT-B/16"), ("RN50", "RN50"))
MIB_PER_GIB = 1024


def num(x: float) -> str:
    """Three significant digits, as the benchmarks' ratios deserve."""
    return f"{x:#.3g}".rstrip(".")


def per_model(values: dict[str, float]) -> str:
    return ", ".join(f"{num(values[key])} ({shown})" for key, shown in MODELS if key in values)


def target_of(results: dict, bench: str, prefix: str) -> str:
    """The benchmark's own target for this figure (the same bound for every model), or blank."""
    bounds = {t["target"] for t in results["benchmarks"][bench]["targets"] if t["name"].startswith(prefix)}
    return bounds.pop() if len(bounds) == 1 else ""


def ratio(results: dict, bench: str, name: str) -> dict[str, float]:
    ratios = results["benchmarks"][bench]["ratios"]
    return {model: ratios[f"{name}[{model}]"] for model, _ in MODELS if f"{name}[{model}]" in ratios}


def rows_where(results: dict, bench: str, table: str, **match) -> list[dict]:
    rows = results["benchmarks"][bench]["tables"][table]
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def figures(results: dict) -> list[tuple[str, str, str]]:
    """(what, figure, target) rows of the README table."""
    training = "Images/s per epoch (Trainer.fit)"
    classes = "Training step against the number of classes (ViT-B-16, one process per group of rows)"
    loader = "Loader against model (eval transform, 500x375 JPEGs)"
    cost = results["benchmarks"]["classes"]["ratios"]
    step_rss = {r["step"]: r["peak RSS MiB"] / MIB_PER_GIB for r in rows_where(results, "classes", classes)}
    memory = results["benchmarks"]["memory"]["ratios"]
    adapters = {
        r["model"]: r["steady img/s"] for r in rows_where(results, "training", training, mode="adapters")
    }
    forward = {r["model"]: r["model img/s (forward, preloaded)"] for r in rows_where(results, "data", loader)}
    share = ratio(results, "training", "text_tower_share_of_cached_step")
    return [
        (
            "prediction throughput, capnet / bare open_clip (batch 8, no TTA)",
            per_model(ratio(results, "inference", "throughput_ratio")),
            target_of(results, "inference", "throughput"),
        ),
        (
            "single-image latency on the app's path / bare open_clip",
            per_model(ratio(results, "inference", "latency_ratio")),
            target_of(results, "inference", "latency"),
        ),
        (
            "training images/s, feature cache / recomputing features, after epoch 1 (batch 32)",
            per_model(ratio(results, "training", "cache_vs_recompute")),
            target_of(results, "training", "feature cache"),
        ),
        (
            "the same with `train.classes_per_step: 8`",
            per_model(ratio(results, "training", "cache_sampled_8_vs_recompute")),
            "",
        ),
        (
            "text tower's share of a cached training step (VOC's 20 classes)",
            ", ".join(f"{num(100 * share[key])} % ({shown})" for key, shown in MODELS if key in share),
            "",
        ),
        (
            "adapters on / off, training images/s",
            per_model(ratio(results, "training", "adapters_on_vs_off")),
            "",
        ),
        ("training images/s with adapters (batch 32)", per_model(adapters), ""),
        ("image-tower forward images/s (preloaded 500x375 JPEGs)", per_model(forward), ""),
        (
            "text-tower cost of a step, 80 / 20 classes; 1,000 / 20 classes",
            f"{num(cost['text_tower_cost_vs_20[cached,80]'])}; "
            f"{num(cost['text_tower_cost_vs_20[adapters,1000]'])}",
            "",
        ),
        (
            "peak RSS, training 1,000 classes at batch 32 with adapters (ViT-B/16)",
            f"{num(step_rss['adapters'])} GiB ({num(step_rss['adapters, class_chunk=100'])} GiB with "
            f"`class_chunk: 100`, {num(step_rss['adapters, classes_per_step=100'])} GiB with "
            "`classes_per_step: 100`)",
            f"{target_of(results, 'classes', 'peak RSS')} GB",
        ),
        (
            "data pipeline / model images/s (500x375 JPEGs)",
            per_model(ratio(results, "data", "loader_vs_model")),
            "loading never the bottleneck",
        ),
        (
            "app start, peak RSS; after one prediction (ViT-B/16)",
            f"{num(memory['app_start_peak_rss_mb[ViT-B-16]'] / MIB_PER_GIB)} GiB; "
            f"{num(memory['app_prediction_peak_rss_mb[ViT-B-16]'] / MIB_PER_GIB)} GiB",
            "",
        ),
        *explain_rows(results),
    ]


def explain_rows(results: dict) -> list[tuple[str, str, str]]:
    if "explain" not in results["benchmarks"]:
        return []
    return [
        (
            "evidence map: fast map / plain prediction (batch 8, 80 classes); "
            "8 x 8 occlusion map / one prediction",
            f"{per_model(ratio(results, 'explain', 'fast_map_ratio'))}; "
            f"{per_model(ratio(results, 'explain', 'occlusion_ratio'))}",
            target_of(results, "explain", "fast map"),
        )
    ]


def later_sections(results: dict) -> str:
    """Sections re-run after the full run (``run_all.py --only``), each with its own commit and date."""
    m = results["machine"]
    later = []
    for name, bench in results["benchmarks"].items():
        b = (bench or {}).get("machine")
        if b and (b.get("git"), b["date"][:10]) != (m.get("git"), m["date"][:10]):
            later.append(
                f" The {name} section was run later, at commit {b.get('git')} on {b['date'][:10]} "
                f"({b['cpu']}, {b['torch_threads']} torch thread(s), load average "
                f"{b['load_average'][0]:.1f} at its start)."
            )
    return "".join(later)


def render(results: dict) -> str:
    m = results["machine"]
    v = m["versions"]
    load = results["load_before"][0] if results.get("load_before") else None
    lines = [
        START,
        f"Figures of `benchmarks/results.json`: `make bench` at commit {m['git']} on {m['date'][:10]}, "
        f"{m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads), torch {v['torch']}, "
        f"open_clip {v['open_clip']}, device {m['device']}; load average {load} at the start; "
        f"{results['total_s'] / 60:.1f} minutes in all (full tables in `benchmarks/results.md`)."
        + later_sections(results),
        "",
        "| what | figure | target |",
        "|---|---|---|",
    ]
    lines += [f"| {what} | {figure} | {target} |" for what, figure, target in figures(results)]
    lines.append(END)
    return "\n".join(lines)


def replace_block(readme: str, block: str) -> str:
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not (start and end):
        raise SystemExit(f"readme_figures: error: {README.name} lacks the markers {START!r} ... {END!r}")
    return head + block + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is stale")
    args = parser.parse_args(argv)
    readme = README.read_text()
    updated = replace_block(readme, render(json.loads(RESULTS.read_text())))
    if args.check:
        if updated != readme:
            print("readme_figures: README.md's table differs from benchmarks/results.json", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
