"""Copy the ablation's reports (python -m capnet.world.ablation) into assets/reports/ for the app's dashboard.

The test scenes they score come along, so the failure gallery can show them. Usage, from the repository
root after `make ablation`: python tools/bundle_ablation_reports.py [runs/ablation]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd

ROWS = {"zero-shot": "synth-lt-zero-shot", "GCN-text-embedding-graph": "synth-lt-capnet-text-graph",
        "GCN-co-occurrence-graph": "synth-lt-cooccurrence-graph"}  # fmt: skip
ASSETS = Path("assets/reports")


def main(source: Path) -> int:
    images = ASSETS / "synth-lt-test-scenes"
    shutil.rmtree(images, ignore_errors=True)
    shutil.copytree(source / "synth-lt" / "test", images)
    table = json.loads((source / "ablation.json").read_text())
    for slug, name in ROWS.items():
        src, dst = source / "reports" / slug, ASSETS / name
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        report = json.loads((src / "report.json").read_text())
        report["produced_by"] = (
            f"python -m capnet.world.ablation (seed {table['seeds'][0]} of {len(table['seeds'])}; "
            f"{table['epochs']} epochs) on Synth-LT with the shipped tiny CLIP "
            "(checkpoints/capnet-synth.safetensors)"
        )
        (dst / "report.json").write_text(json.dumps(report, indent=1))
        shutil.copy(src / "per_class.csv", dst / "per_class.csv")
        scores = pd.read_csv(src / "scores.csv")
        scores["path"] = [str(images / "images" / Path(p).name) for p in scores["path"]]
        scores.to_csv(dst / "scores.csv", index=False, float_format="%.10g")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation")))
