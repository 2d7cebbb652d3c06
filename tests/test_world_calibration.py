"""The world's calibration statistics: the probe's C is chosen on held-out scenes, and the whole
measurement runs end to end on a backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from capnet.backbone import load_backbone
from capnet.world.calibration import AP_CEILING, calibration_stats, linear_probe, naming_rates
from capnet.world.scenes import SCENE_CLASSES


def test_linear_probe_chooses_c_on_the_held_out_part_only():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 3)) < 0.3).astype(int)
    x = y + rng.normal(0, 0.4, (400, 3))
    probe, choice = linear_probe(x, y, held_fraction=0.25, cs=(0.001, 1.0))
    # Independent recomputation of the held-out AP for each C: fit on the last 300, score the first 100.
    for c in (0.001, 1.0):
        scores = np.stack(
            [
                LogisticRegression(C=c, max_iter=2000).fit(x[100:], y[100:, k]).decision_function(x[:100])
                for k in range(3)
            ],
            axis=1,
        )
        assert choice["held_out_map"][str(c)] == pytest.approx(
            average_precision_score(y[:100], scores), abs=1e-6
        )
    assert choice["C"] == max((0.001, 1.0), key=lambda c: choice["held_out_map"][str(c)])
    # The chosen probe is refitted on every training row and separates the classes.
    assert average_precision_score(y, probe.decision_function(x)) > 0.8


def test_naming_rates_are_fractions_and_small_objects_are_named_less():
    rates = naming_rates(n=400, seed=5)
    assert rates.shape == (len(SCENE_CLASSES),) and ((rates >= 0) & (rates <= 1)).all()
    small = SCENE_CLASSES.index("small yellow circle")
    large = SCENE_CLASSES.index("large green circle")
    assert rates[small] < rates[large]


def test_calibration_stats_end_to_end_on_a_tiny_backbone():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    backbone = load_backbone(name="capnet-tiny", pretrained=None, device="cpu")
    stats = calibration_stats(backbone, n_test=120, n_probe=200, n_naming=200)
    assert stats["gap"] == pytest.approx(stats["probe_map"] - stats["zero_shot_map"])
    zs = np.array([stats["zero_shot_ap"][c] for c in SCENE_CLASSES])
    assert stats["classes_at_ceiling"] == int((zs >= AP_CEILING).sum())
    assert stats["targets"]["gap >= 0.05"] == (stats["gap"] >= 0.05)
    seldom = [SCENE_CLASSES.index(c) for c in stats["seldom_named"]["classes"]]
    assert stats["seldom_named"]["zero_shot_ap"] == pytest.approx(zs[seldom].mean(), abs=1e-4)
