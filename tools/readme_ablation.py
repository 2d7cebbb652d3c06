"""Write the README's Synth-LT ablation tables from assets/reports/synth-lt-ablation*.json (the files
`make ablation` bundles), so that the tables are the runs' own numbers. `--check` reports a stale README."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from capnet.world.ablation import markdown_table  # noqa: E402

README = ROOT / "README.md"
TABLES = (ROOT / "assets" / "reports" / "synth-lt-ablation.json",
          ROOT / "assets" / "reports" / "synth-lt-ablation-world1.json")  # fmt: skip
START = "<!-- ablation: start (written by tools/readme_ablation.py from assets/reports; do not edit) -->"
END = "<!-- ablation: end -->"


def render(paths: tuple[Path, ...] = TABLES) -> str:
    parts = [START]
    for path in paths:
        payload = json.loads(path.read_text())
        shipped = payload.get("shipped")
        parts.append(markdown_table(payload).rstrip("\n"))
        if shipped:
            claimed = " / ".join(
                f"{100 * shipped['claimed_map'][g]:.1f}" for g in ("total", "head", "medium", "tail")
            )
            where = (
                "shipped as `checkpoints/capnet-synth-lt.safetensors`"
                if payload["world"] == 0
                else "its checkpoint is not shipped (only world 0's is)"
            )
            parts.append(
                f"Best on validation among the rows a checkpoint can serve alone: **{shipped['row']}** (mean "
                f"validation mAP over the seeds); {where}; seed {shipped['seed']}'s test mAP total / head / "
                f"medium / tail {claimed}."
            )
        full = payload.get("full_method")
        if full:
            claimed = " / ".join(
                f"{100 * full['claimed_map'][g]:.1f}" for g in ("total", "head", "medium", "tail")
            )
            parts.append(
                f"The full method ({full['row']}, seed {full['seed']}) ships beside it as "
                f"`checkpoints/capnet-synth-lt-gcn.safetensors`, so that the GCN can be seen at work; "
                f"its test mAP total / head / medium / tail {claimed}."
            )
    parts.append(END)
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's tables are stale")
    args = parser.parse_args(argv)
    readme = README.read_text()
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not (start and end):
        raise SystemExit(f"readme_ablation: error: {README.name} lacks the markers {START!r} ... {END!r}")
    updated = head + render() + tail
    if args.check:
        return int(updated != readme)
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
