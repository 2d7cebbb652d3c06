"""Copy the ablation's results (python -m capnet.world.ablation, both worlds) into the app's bundled files.

World 0's first-seed reports go to assets/reports/synth-lt-* with the test scenes they score (so the
failure gallery can show them), each world's table to assets/reports/synth-lt-ablation[-worldN].json, and
the checkpoint the ablation chose on validation to checkpoints/capnet-synth-lt.safetensors (the full method's,
when another row won, to capnet-synth-lt-gcn.safetensors). Usage, from the
repository root after the ablation runs: python tools/bundle_ablation_reports.py [runs/ablation]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd

from capnet.world.ablation import slug

ROWS = {"zero-shot": "synth-lt-zero-shot", "GCN-text-embedding-graph": "synth-lt-capnet-text-graph",
        "GCN-co-occurrence-graph": "synth-lt-cooccurrence-graph"}  # fmt: skip
ASSETS = Path("assets/reports")
CHECKPOINTS = (
    Path("checkpoints/capnet-synth-lt.safetensors"),
    Path("checkpoints/capnet-synth-lt-gcn.safetensors"),
)


def bundle_reports(source: Path) -> None:
    images = ASSETS / "synth-lt-test-scenes"
    shutil.rmtree(images, ignore_errors=True)
    shutil.copytree(source / "synth-lt" / "test", images)
    table = json.loads((source / "ablation.json").read_text())
    rows = dict(ROWS)
    shipped = table.get("shipped")
    if shipped:
        rows[slug(shipped["row"])] = "synth-lt-capnet"
    for folder, name in rows.items():
        src, dst = source / "reports" / folder, ASSETS / name
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        report = json.loads((src / "report.json").read_text())
        report["produced_by"] = (
            f"python -m capnet.world.ablation (world {table.get('world', 0)}, seed {table['seeds'][0]} of "
            f"{len(table['seeds'])}; best validation epoch of {table['epochs']}) on Synth-LT with the "
            "shipped tiny CLIP (checkpoints/capnet-synth.safetensors)"
        )
        (dst / "report.json").write_text(json.dumps(report, indent=1))
        shutil.copy(src / "per_class.csv", dst / "per_class.csv")
        scores = pd.read_csv(src / "scores.csv")
        scores["path"] = [str(images / "images" / Path(p).name) for p in scores["path"]]
        scores.to_csv(dst / "scores.csv", index=False, float_format="%.10g")


def main(source: Path) -> int:
    worlds = sorted(source.glob("world*/ablation.json")) or [source / "ablation.json"]
    for path in worlds:
        suffix = "" if path.parent.name in ("world0", source.name) else f"-{path.parent.name}"
        table = json.loads(path.read_text())
        table["weights"] = "checkpoints/capnet-synth.safetensors"  # not the path of the machine that ran it
        (ASSETS / f"synth-lt-ablation{suffix}.json").write_text(json.dumps(table, indent=1))
    first = worlds[0].parent
    bundle_reports(first)
    for checkpoint in CHECKPOINTS:
        if (first / checkpoint.name).is_file():
            shutil.copy(first / checkpoint.name, checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation")))
