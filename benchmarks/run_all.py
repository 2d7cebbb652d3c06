"""Run every benchmark (each in its own interpreter) and write results.md and results.json.

python benchmarks/run_all.py            # the full set: `make bench`
python benchmarks/run_all.py --quick    # tiny models and sizes: a smoke test (written to a temp folder)
python benchmarks/run_all.py --only inference,data --device cuda
                                            # --only reruns those sections and keeps the others
On a machine shared with other jobs, pass --threads set to the idle cores (see benchmarks/common.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from benchmarks.common import fmt, machine_info, markdown_table  # noqa: E402
from capnet.backbone import select_device  # noqa: E402

HERE = Path(__file__).resolve().parent
BENCHES = {
    "inference": "bench_inference.py",
    "training": "bench_training.py",
    "classes": "bench_classes.py",
    "memory": "bench_memory.py",
    "data": "bench_data.py",
    "explain": "bench_explain.py",
}
TITLES = {
    "inference": "1. Inference: CapNet against bare open_clip",
    "training": "2. Training throughput",
    "classes": "3. Scaling with the number of classes",
    "memory": "4. Memory",
    "data": "5. Data loading",
    "explain": "6. Evidence maps against plain prediction",
}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_bench(name: str, args: argparse.Namespace, json_path: Path) -> tuple[dict | None, float, str]:
    cmd = [sys.executable, str(HERE / BENCHES[name]), "--json", str(json_path), "--device", args.device]
    if args.quick:
        cmd.append("--quick")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    shown = " ".join(["python", f"benchmarks/{BENCHES[name]}", *cmd[2:]]).replace(f" --json {json_path}", "")
    print(f"\n===== {name}: {shown}", flush=True)
    began = time.perf_counter()
    proc = subprocess.run(cmd, cwd=HERE.parent)
    seconds = time.perf_counter() - began
    if proc.returncode != 0 or not json_path.is_file():
        print(f"===== {name} FAILED (exit {proc.returncode})", flush=True)
        return None, seconds, shown
    return json.loads(json_path.read_text()), seconds, shown


def write_markdown(summary: dict, path: Path) -> None:
    m = summary["machine"]
    v = m["versions"]
    quick = " --quick (a smoke test: the figures mean nothing)" if summary["quick"] else ""
    lines = [
        "# capnet benchmarks",
        "",
        f"Measured by `benchmarks/run_all.py`{quick} (last run {m['date']}; each section says when it "
        f"started); the benchmarks took {summary['total_s'] / 60:.1f} minutes.",
        "Absolute times on shared machines are noisy: compare the ratios, which are measured side by side",
        "in one run (interleaved repeats; the median of the per-repeat ratios).",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} ({m['cores']} cores, torch threads {m['torch_threads']}) |",
        f"| memory | {m['memory_gb']} GB |",
        f"| device | {m['device']}{' (' + m['gpu'] + ')' if m['gpu'] else ''} |",
        f"| platform | {m['platform']}, Python {m['python']} |",
        f"| versions | torch {v['torch']}, open_clip {v['open_clip']}, capnet {v['capnet']}, "
        f"torchvision {v['torchvision']}, Pillow {v['pillow']} |",
        f"| git commit | {m.get('git') or 'n/a'} |",
        f"| load average before / after | {fmt(summary['load_before'])} / {fmt(summary['load_after'])} |",
        f"| CPU pressure before (PSI avg10) | {fmt(m.get('cpu_pressure_avg10'))} % |",
        "",
        "Reproduce: `make bench` (all of it), or one benchmark, for example",
        "`.venv/bin/python benchmarks/bench_inference.py` (each script takes `--quick`, `--device`,",
        "`--models`, `--json PATH`). Commands of this run:",
        "",
    ]
    lines += [f"- `{c}` ({summary['durations_s'][n]:.0f} s)" for n, c in summary["commands"].items()]
    load = summary.get("load_before")
    if load and load[0] >= 1.0:
        lines += [
            "",
            f"Other processes were running on this machine (load average {load[0]:.1f} at the start; each",
            "section gives its own): absolute times are slower than on an idle machine, and with more torch",
            "threads than idle cores they degrade badly, hence `--threads` where a run says so.",
        ]
    targets = []
    for name, result in summary["benchmarks"].items():
        for t in (result or {}).get("targets", []):
            status = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
            targets.append(
                {
                    "benchmark": name,
                    "target": t["name"],
                    "value": t["value"],
                    "bound": t["target"],
                    "": status,
                }
            )
    lines += ["", "## Targets", "", markdown_table(targets) if targets else "(none measured)", ""]
    for name, result in summary["benchmarks"].items():
        lines += [f"## {TITLES.get(name, name)}", ""]
        if result is None:
            lines += ["This benchmark failed; see the console output.", ""]
            continue
        started = result["machine"]
        elsewhere = (started.get("cpu"), started.get("git")) != (m.get("cpu"), m.get("git"))
        where = f" on {started.get('cpu')} at commit {started.get('git') or 'n/a'}" if elsewhere else ""
        lines += [
            f"Started {started['date']}{where}, load average {fmt(started.get('load_average'))}, "
            f"CPU pressure {fmt(started.get('cpu_pressure_avg10'))} %, "
            f"torch threads {started['torch_threads']}.",
            "",
        ]
        for title, rows in result["tables"].items():
            lines += [f"### {title}", "", markdown_table(rows)]
        if result["ratios"]:
            lines += ["Ratios and figures:", ""]
            lines += [f"- `{k}` = {fmt(val)}" for k, val in result["ratios"].items()]
            lines += [""]
        for note in result["notes"]:
            lines += [f"Note: {note}", ""]
    path.write_text("\n".join(lines).rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models and sizes (a smoke test)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", default=None, help=f"comma-separated subset of {list(BENCHES)}")
    p.add_argument("--out", default=None, help="where results.md/.json go (default benchmarks/)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # so that the header reports what the benchmarks used
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    if args.out:
        out = Path(args.out)
    else:  # a smoke test never overwrites the measured figures
        out = Path(tempfile.mkdtemp(prefix="capnet-bench-")) if args.quick else HERE
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {
        "quick": args.quick,
        "machine": machine_info(select_device(args.device)),
        "load_before": load_average(),
        "commands": {},
        "durations_s": {},
        "benchmarks": {},
    }
    previous = out / "results.json"
    old: dict = {}
    kept: dict = {}
    if args.only and previous.is_file():
        # --only updates those sections of an earlier run and keeps the others (each says when it ran).
        old = json.loads(previous.read_text())
        if old.get("quick") == args.quick:
            for key in ("commands", "durations_s", "benchmarks"):
                summary[key] = {k: v for k, v in old.get(key, {}).items() if k not in names}
            # The header stays the full run's; a section run later names its own machine and commit.
            kept = {k: v for k, v in old.get("benchmarks", {}).items() if k not in names}
            if kept:
                summary["machine"], summary["load_before"] = old["machine"], old.get("load_before")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="capnet-bench-json-") as tmp:
        for name in names:
            result, seconds, shown = run_bench(name, args, Path(tmp) / f"{name}.json")
            summary["benchmarks"][name] = result
            summary["durations_s"][name] = round(seconds, 1)
            summary["commands"][name] = shown
    order = [n for n in BENCHES if n in summary["benchmarks"]]
    for key in ("commands", "durations_s", "benchmarks"):
        summary[key] = {n: summary[key][n] for n in order if n in summary[key]}
    summary["total_s"] = round(sum(summary["durations_s"].values()), 1)
    summary["wall_s"] = round(time.perf_counter() - began, 1)
    summary["load_after"] = old.get("load_after") if kept else load_average()
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    write_markdown(summary, out / "results.md")
    print(f"\nwrote {out / 'results.md'} and {out / 'results.json'} ({summary['total_s'] / 60:.1f} min)")
    failed = [n for n, r in summary["benchmarks"].items() if r is None]
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
