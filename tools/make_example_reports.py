"""Regenerate the dashboard's bundled example reports (assets/reports/) with the project's own code.

Two runs of `capnet train` on the synthetic coloured-squares VOC tree (capnet.world.squares), on the tiny
random-weight backbone: DB-focal loss against plain BCE. The reports are real outputs; the numbers only
show that the pipeline works, they say nothing about CLIP or VOC. Usage: python tools/make_example_reports.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

from capnet import cli
from capnet.world.squares import write_voc

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("assets/reports")


def main() -> int:
    data_root = OUT / "synthetic-voc"
    shutil.rmtree(data_root, ignore_errors=True)
    devkit = write_voc(data_root, n_train=120, n_test=60)
    for name, loss in (("dbfocal", {"name": "dbfocal"}), ("bce", {"name": "bce"})):
        cfg = {
            "name": f"synthetic-{name}",
            "model": {"backbone": {"name": "capnet-tiny", "pretrained": None, "device": "cpu"},
                      "prompt": {"n_ctx": 4}, "adapter": {"kind": "lora"}, "init_logit_scale": 100},
            "data": {"format": "voc", "root": str(devkit), "num_workers": 0, "val_fraction": 0.2},
            "loss": loss,
            "train": {"epochs": 8, "batch_size": 16, "optimizer": "adamw", "lr": 0.003, "cache_dir": "",
                      "out_dir": str(OUT / "runs")},
            "eval": {"tta": True},
        }  # fmt: skip
        path = OUT / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        if cli.main(["train", "--config", str(path), "--out", str(OUT / f"synthetic-{name}")]) != 0:
            return 1
        path.unlink()
        report_path = OUT / f"synthetic-{name}" / "report.json"
        report = json.loads(report_path.read_text())
        report["produced_by"] = (
            f"tools/make_example_reports.py: capnet train, {name} loss, synthetic coloured squares "
            "(capnet.world.squares), tiny random-weight backbone; shows the pipeline, not CLIP or VOC"
        )
        report.pop("checkpoint", None)  # not shipped
        report_path.write_text(json.dumps(report, indent=1))
        for leftover in ("last_state.safetensors", "model.safetensors"):
            (OUT / f"synthetic-{name}" / leftover).unlink()
    shutil.rmtree(devkit / "VOC2012")  # the gallery shows test images only
    return 0


if __name__ == "__main__":
    if Path.cwd() != ROOT:
        sys.exit("run from the repository root: python tools/make_example_reports.py")
    sys.exit(main())
