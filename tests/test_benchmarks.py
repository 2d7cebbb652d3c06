"""Smoke test of the benchmarks: each script runs with --quick on the tiny model and reports its ratios.

No timing is asserted (the figures of a smoke test mean nothing); only that every ratio and target that
the README's table quotes is produced.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_classes, bench_data, bench_inference, bench_memory, bench_training, run_all

# Only the ViT (capnet-tiny under --quick) keeps the whole file well under half a minute; one thread, because
# tiny ops on two OpenMP threads crawl whenever another process holds a core.
QUICK = ["--quick", "--device", "cpu", "--models", "ViT-B-16", "--threads", "1"]
TINY = "capnet-tiny"


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def check(result: dict, ratios: list[str], targets: int) -> None:
    missing = [key for key in ratios if key not in result["ratios"]]
    assert not missing, f"missing ratios {missing}; got {sorted(result['ratios'])}"
    assert len(result["targets"]) == targets
    for target in result["targets"]:
        assert {"name", "value", "target", "met"} <= set(target)
        assert target["met"] in (True, False)
    assert result["tables"] and all(result["tables"].values())
    assert result["machine"]["versions"]["torch"] and result["machine"]["cpu"]
    json.dumps(result)


def test_inference_reports_throughput_and_latency_ratios(tmp_path):
    result = bench_inference.run([*QUICK, "--json", str(tmp_path / "r.json")])
    check(result, [f"throughput_ratio[{TINY}]", f"latency_ratio[{TINY}]"], targets=2)
    assert json.loads((tmp_path / "r.json").read_text())["bench"] == "inference"


def test_training_reports_cache_and_adapter_ratios_and_a_breakdown():
    result = bench_training.run(QUICK)
    check(
        result,
        [
            f"cache_vs_recompute[{TINY}]",
            f"adapters_on_vs_off[{TINY}]",
            f"text_tower_share_of_cached_step[{TINY}]",
        ],
        targets=1,
    )
    parts = {row["part"] for rows in result["tables"].values() for row in rows if "part" in row}
    assert {"image tower", "text tower (prompts)", "GCN", "scores + loss", "optimizer (clip + step)"} <= parts


def test_classes_reports_text_tower_scaling_and_sampling():
    result = bench_classes.run(QUICK)
    check(
        result,
        [
            "text_tower_cost_vs_20[cached,5]",
            "text_tower_sampled_vs_all[20]",
            "text_tower_chunked_vs_all[20]",
            "step_memory_chunked_vs_all[20]",
            "peak_rss_gb[adapters,20]",
        ],
        targets=1,
    )


def test_memory_starts_the_app_and_measures_one_prediction():
    result = bench_memory.run(QUICK)
    check(result, ["app_start_peak_rss_mb[tiny]", f"library_prediction_peak_rss_mb[{TINY}]"], targets=0)
    assert result["ratios"]["app_start_peak_rss_mb[tiny]"] > 0


def test_data_reports_loader_against_model():
    result = bench_data.run(QUICK)
    check(
        result,
        [f"loader_vs_model[{TINY}]", f"end_to_end_vs_model[{TINY}]", "draft_decode_speedup"],
        targets=1,
    )


@pytest.mark.parametrize("quick", [False, True])
def test_run_all_writes_the_markdown_table(tmp_path, quick):
    from benchmarks.common import machine_info

    result = {
        "machine": machine_info(),
        "tables": {"t": [{"model": "m", "images/s": 3.14159}]},
        "ratios": {"throughput_ratio[m]": 0.97},
        "targets": [{"name": "throughput [m]", "value": 0.97, "target": ">= 0.95", "met": True}],
        "notes": ["a note"],
    }
    summary = {
        "quick": quick,
        "machine": machine_info(),
        "load_before": [1.0, 1.0, 1.0],
        "load_after": None,
        "commands": {"inference": "python benchmarks/bench_inference.py"},
        "durations_s": {"inference": 12.0},
        "benchmarks": {"inference": result, "data": None},
        "total_s": 60.0,
    }
    run_all.write_markdown(summary, tmp_path / "results.md")
    text = (tmp_path / "results.md").read_text()
    assert "| CPU |" in text and "torch" in text and "| throughput [m] | 0.97 | >= 0.95 | met |" in text
    assert "3.14" in text and "This benchmark failed" in text
    assert ("smoke test" in text) == quick
