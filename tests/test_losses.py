"""Checks capnet.losses against independent per-element float64 references written with plain math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from capnet.losses import AsymmetricLoss, BCELoss, DBFocalLoss, FocalLoss, build_loss

# ----------------------------------------------------------------------------- references


def _bce(x: float, y: float) -> float:
    """-[y log s(x) + (1-y) log(1-s(x))], written in the overflow-free form."""
    return max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def ref_dbfocal(
    logits,
    targets,
    counts,
    num_train,
    *,
    mu=0.3,
    neg_scale=5.0,
    init_bias=0.05,
    alpha=0.1,
    beta=10.0,
    gamma=2.0,
    balance=2.0,
    power=0.0,
    batch_mean_pt=False,
):
    """Loop reference of the spec. Counts must already be in [1, N-1] (the caller clamps).

    ``batch_mean_pt=True`` is the *wrong* variant where pt comes from the batch-mean BCE.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    n = [float(c) for c in counts]
    assert all(1 <= c <= num_train - 1 for c in n)
    rows, cols = z.shape
    q_raw = [c ** (-power) for c in n]
    q_mean = sum(q_raw) / cols
    q = [v / q_mean for v in q_raw]

    bces, weights = [], []
    for i in range(rows):
        r = sum(y[i, c] / n[c] for c in range(cols))
        for c in range(cols):
            if r > 0:
                p = (1.0 / n[c]) / r
                w = alpha + _sigmoid(beta * (p - mu))
            else:
                w = alpha + 1.0
            w *= q[c]
            b = -init_bias * math.log(num_train / n[c] - 1.0) / neg_scale
            zp = z[i, c] + b
            if y[i, c] == 1:
                zr, wr = zp, w
            else:
                zr, wr = neg_scale * zp, w / neg_scale
            bces.append(_bce(zr, y[i, c]))
            weights.append(wr)
    mean_bce = sum(bces) / len(bces)
    total = 0.0
    for bce, wr in zip(bces, weights, strict=True):
        pt = math.exp(-mean_bce) if batch_mean_pt else math.exp(-bce)
        total += balance * (1.0 - pt) ** gamma * wr * bce
    return total / len(bces)


def ref_focal(logits, targets, gamma=2.0, alpha=None):
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    total = 0.0
    for x, t in zip(z.ravel(), y.ravel(), strict=True):
        p = _sigmoid(x)
        pt = p if t == 1 else 1.0 - p
        log_pt = -_bce(x, t)
        a = 1.0 if alpha is None else (alpha if t == 1 else 1.0 - alpha)
        total += -a * (1.0 - pt) ** gamma * log_pt
    return total / z.size


def ref_asl(logits, targets, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, eps=1e-8):
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    total = 0.0
    for x, t in zip(z.ravel(), y.ravel(), strict=True):
        p = _sigmoid(x)
        if t == 1:
            total += -((1.0 - p) ** gamma_pos) * math.log(max(p, eps))
        else:
            pm = max(p - clip, 0.0)
            total += -(pm**gamma_neg) * math.log(max(1.0 - pm, eps))
    return total / z.size


# ----------------------------------------------------------------------------- fixtures


def _case(seed: int, rows: int = 6, cols: int = 7, num_train: int = 100, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, num_train, size=cols)
    logits = rng.normal(0.0, scale, size=(rows, cols))
    targets = (rng.random((rows, cols)) < 0.35).astype(np.float64)
    targets[0, :] = 0.0  # always include a row without positives
    targets[1, 0] = 1.0  # and make sure some positives exist
    return logits, targets, counts, num_train


def _loss(module, logits, targets, dtype=torch.float64) -> float:
    return float(module(torch.tensor(logits, dtype=dtype), torch.tensor(targets, dtype=dtype)))


# ----------------------------------------------------------------------------- DBFocalLoss

SETTINGS = {
    "default": {},
    "voc": {"mu": 0.3, "neg_scale": 5.0},
    "coco": {"mu": 0.2, "neg_scale": 2.0},
    "class_weight": {"class_weight_power": 0.5},
    "coco_class_weight": {"mu": 0.2, "neg_scale": 2.0, "class_weight_power": 0.5, "gamma": 1.0},
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_dbfocal_matches_loop_reference(name):
    opts = SETTINGS[name]
    ref_opts = {("power" if k == "class_weight_power" else k): v for k, v in opts.items()}
    for seed in range(3):
        logits, targets, counts, n_train = _case(seed)
        loss = DBFocalLoss(counts, n_train, **opts)
        expected = ref_dbfocal(logits, targets, counts, n_train, **ref_opts)
        assert _loss(loss, logits, targets) == pytest.approx(expected, rel=1e-6)
        # float32 logits (the usual training dtype) agree to float32 precision
        assert _loss(loss, logits, targets, torch.float32) == pytest.approx(expected, rel=1e-5)


def test_dbfocal_settings_actually_change_the_value():
    logits, targets, counts, n_train = _case(7)
    # "voc" equals the defaults by design, so it is left out
    distinct = [opts for name, opts in SETTINGS.items() if name != "voc"]
    values = [_loss(DBFocalLoss(counts, n_train, **opts), logits, targets) for opts in distinct]
    assert len({round(v, 8) for v in values}) == len(values)


def test_dbfocal_focal_term_is_per_element_not_batch_mean():
    logits, targets, counts, n_train = _case(3, scale=4.0)
    got = _loss(DBFocalLoss(counts, n_train), logits, targets)
    right = ref_dbfocal(logits, targets, counts, n_train)
    wrong = ref_dbfocal(logits, targets, counts, n_train, batch_mean_pt=True)
    assert abs(right - wrong) > 0.02 * right  # the reference can tell the two apart
    assert got == pytest.approx(right, rel=1e-6)
    assert got != pytest.approx(wrong, rel=1e-3)


def test_dbfocal_does_not_modify_logits_and_gradient_is_sane():
    logits, targets, counts, n_train = _case(11)
    z = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    before = z.detach().clone()
    loss = DBFocalLoss(counts, n_train)(z, torch.tensor(targets))
    loss.backward()
    assert torch.equal(z.detach(), before)
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_dbfocal_gradcheck_float64():
    rng = np.random.default_rng(5)
    counts, n_train = [3, 40, 17, 88], 100
    z = torch.tensor(rng.normal(0.0, 1.5, size=(3, 4)), dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.float64)
    loss = DBFocalLoss(counts, n_train, class_weight_power=0.5)
    assert torch.autograd.gradcheck(lambda x: loss(x, y), (z,), eps=1e-6, atol=1e-6)


def test_dbfocal_extreme_counts_are_clamped():
    n_train = 50
    counts = [0, n_train, 5, 25]  # never seen / present in every image
    clamped = [1, n_train - 1, 5, 25]
    logits = np.array([[2.0, -1.0, 0.5, -3.0], [-0.5, 4.0, -2.0, 1.0], [1.5, 0.2, -0.7, 0.0]])
    targets = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]], dtype=np.float64)  # last row: no positive
    module = DBFocalLoss(counts, n_train, class_weight_power=0.5)
    z = torch.tensor(logits, requires_grad=True)
    loss = module(z, torch.tensor(targets))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    expected = ref_dbfocal(logits, targets, clamped, n_train, power=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert all(torch.isfinite(b).all() for b in module.buffers())


def test_dbfocal_row_without_positives_uses_alpha_plus_one():
    module = DBFocalLoss([10, 20, 30], 100, alpha=0.1)
    w = module.rebalance_weight(torch.zeros(2, 3))
    assert torch.allclose(w, torch.full((2, 3), 1.1))
    loss = module(torch.randn(2, 3), torch.zeros(2, 3))
    assert torch.isfinite(loss)


def test_dbfocal_target_dtypes_buffers_and_low_precision():
    logits, targets, counts, n_train = _case(2)
    module = DBFocalLoss(counts, n_train)
    z = torch.tensor(logits, dtype=torch.float32)
    ref = module(z, torch.tensor(targets, dtype=torch.float32))
    assert torch.equal(module(z, torch.tensor(targets).bool()), ref)
    assert torch.equal(module(z, torch.tensor(targets).long()), ref)
    assert {"inv_freq", "neg_bias", "class_weight"} <= set(module.state_dict())
    out = module(z.bfloat16(), torch.tensor(targets).bool())
    assert out.dtype == torch.float32 and out.dim() == 0
    assert torch.allclose(out, module(z.bfloat16().float(), torch.tensor(targets).float()))


@pytest.mark.parametrize(
    ("counts", "n_train", "shape"),
    [
        ([1, 1], 1, (2, 2)),  # N < 2
        ([5, 11], 10, (2, 2)),  # n_c > N
        ([5, -1], 10, (2, 2)),  # n_c < 0
        ([5, 6, 7], 10, (2, 2)),  # length mismatch with logits
    ],
)
def test_dbfocal_bad_inputs(counts, n_train, shape):
    with pytest.raises(ValueError):
        DBFocalLoss(counts, n_train)(torch.zeros(shape), torch.zeros(shape))


def test_dbfocal_target_shape_mismatch():
    with pytest.raises(ValueError):
        DBFocalLoss([2, 3], 10)(torch.zeros(2, 2), torch.zeros(3, 2))


# ----------------------------------------------------------------------------- baselines


def test_bce_matches_torch():
    logits, targets, *_ = _case(4)
    z, y = torch.tensor(logits), torch.tensor(targets)
    assert float(BCELoss()(z, y)) == pytest.approx(float(F.binary_cross_entropy_with_logits(z, y)), rel=1e-12)
    assert float(BCELoss()(z.float(), y.bool())) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(z, y)), rel=1e-6
    )


@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, None), (2.0, 0.25), (1.5, 0.7), (0.0, 0.25)])
def test_focal_matches_loop_reference(gamma, alpha):
    logits, targets, *_ = _case(8)
    got = _loss(FocalLoss(gamma=gamma, alpha=alpha), logits, targets)
    assert got == pytest.approx(ref_focal(logits, targets, gamma, alpha), rel=1e-9)


def test_focal_gamma_zero_is_bce():
    logits, targets, *_ = _case(9)
    assert _loss(FocalLoss(gamma=0.0), logits, targets) == pytest.approx(
        _loss(BCELoss(), logits, targets), rel=1e-12
    )
    assert _loss(FocalLoss(gamma=2.0), logits, targets) < _loss(BCELoss(), logits, targets)


@pytest.mark.parametrize(
    "opts",
    [{}, {"gamma_pos": 1.0, "gamma_neg": 2.0, "clip": 0.1}, {"clip": 0.0}, {"gamma_neg": 4.0, "clip": 0.3}],
)
def test_asl_matches_loop_reference(opts):
    logits, targets, *_ = _case(10, scale=5.0)
    got = _loss(AsymmetricLoss(**opts), logits, targets)
    assert got == pytest.approx(ref_asl(logits, targets, **opts), rel=1e-9)


def test_asl_clip_zeroes_easy_negatives():
    z = torch.tensor([[-6.0, -4.0]])  # sigmoid < 0.05 for both
    assert float(AsymmetricLoss()(z, torch.zeros(1, 2))) == 0.0


# ----------------------------------------------------------------------------- factory


def test_build_loss_names_and_options():
    assert isinstance(build_loss("bce"), BCELoss)
    focal = build_loss("focal", gamma=1.0, alpha=0.25)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.0 and focal.alpha == 0.25
    assert isinstance(build_loss("asl", gamma_neg=2.0), AsymmetricLoss)
    db = build_loss("dbfocal", class_freq=[3, 4], num_train=10, mu=0.2, neg_scale=2.0)
    assert isinstance(db, DBFocalLoss) and db.mu == 0.2 and db.neg_scale == 2.0


def test_build_loss_errors():
    with pytest.raises(ValueError, match="dbfocal"):
        build_loss("nope")
    with pytest.raises(
        ValueError, match=r"^loss 'dbfocal' needs the training class counts: pass class_freq and num_train$"
    ):
        build_loss("dbfocal")
    with pytest.raises(ValueError, match="class counts"):
        build_loss("dbfocal", class_freq=[1, 2])


# ------------------------------------------------------------------- edges (found by mutation testing)


def test_dbfocal_buffers_are_float32_and_hold_the_documented_quantities():
    counts, n_train = [0, 4, 9, 10], 10  # clamped to [1, N - 1]
    module = DBFocalLoss(counts, n_train, init_bias=0.05, neg_scale=5.0, class_weight_power=0.5)
    n = np.array([1.0, 4.0, 9.0, 9.0])
    assert {b.dtype for b in module.buffers()} == {torch.float32}  # .to(device) works on any backend
    np.testing.assert_allclose(module.inv_freq.numpy(), 1.0 / n, rtol=1e-7)
    np.testing.assert_allclose(module.neg_bias.numpy(), -0.05 * np.log(10 / n - 1.0) / 5.0, rtol=1e-6)
    q = n**-0.5
    np.testing.assert_allclose(module.class_weight.numpy(), q / q.mean(), rtol=1e-6)


def test_dbfocal_accepts_a_tensor_of_counts_and_a_single_class():
    logits, targets, counts, n_train = _case(3)
    as_list = DBFocalLoss(counts.tolist(), n_train)
    as_tensor = DBFocalLoss(torch.tensor(counts), n_train)
    assert _loss(as_tensor, logits, targets) == _loss(as_list, logits, targets)
    one = DBFocalLoss([3], 2 + 3)
    expected = ref_dbfocal(logits[:, :1], targets[:, :1], [3], 5)
    assert _loss(one, logits[:, :1], targets[:, :1]) == pytest.approx(expected, rel=1e-9)


def test_dbfocal_bounds_of_num_train_and_neg_scale():
    DBFocalLoss([1, 1], 2)  # the smallest training set: two images
    with pytest.raises(ValueError, match="num_train must be at least 2, got 1"):
        DBFocalLoss([1, 1], 1)
    assert DBFocalLoss([1, 1], 2, neg_scale=0.5).neg_scale == 0.5  # positive but below one is fine
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"neg_scale must be positive, got {bad}"):
            DBFocalLoss([1, 1], 2, neg_scale=bad)


@pytest.mark.parametrize(
    ("counts", "n_train", "match"),
    [
        ([[1, 2], [3, 4]], 10, r"non-empty 1-D sequence, got shape \(2, 2\)"),
        ([], 10, r"non-empty 1-D sequence, got shape \(0,\)"),
        ([5, 11], 10, r"class_freq entries must lie in \[0, num_train=10\]"),
    ],
)
def test_dbfocal_bad_counts_are_named(counts, n_train, match):
    with pytest.raises(ValueError, match=match):
        DBFocalLoss(counts, n_train)


def test_dbfocal_wrong_logits_and_target_shapes_are_named():
    module = DBFocalLoss([2, 3, 4], 10)
    with pytest.raises(ValueError, match=r"logits must be \(B, 3\) to match class_freq, got \(2, 2\)"):
        module(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"targets shape \(3, 3\) does not match logits \(2, 3\)"):
        module(torch.zeros(2, 3), torch.zeros(3, 3))


def test_dbfocal_repr_names_its_settings():
    text = repr(DBFocalLoss([2, 3], 10, mu=0.2, neg_scale=2.0, class_weight_power=0.5))
    for part in ("num_classes=2", "num_train=10", "mu=0.2", "neg_scale=2.0", "class_weight_power=0.5"):
        assert part in text


def test_focal_defaults_and_alpha_bounds():
    logits, targets, *_ = _case(11)
    assert _loss(FocalLoss(), logits, targets) == pytest.approx(ref_focal(logits, targets, 2.0), rel=1e-9)
    for alpha in (0.0, 1.0):  # both ends are valid weights
        got = _loss(FocalLoss(alpha=alpha), logits, targets)
        assert got == pytest.approx(ref_focal(logits, targets, 2.0, alpha), rel=1e-9)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"alpha must lie in \[0, 1\] or be None, got {bad}"):
            FocalLoss(alpha=bad)


def test_asl_without_clip_is_no_shift():
    logits, targets, *_ = _case(12, scale=5.0)
    got = _loss(AsymmetricLoss(clip=None), logits, targets)
    assert got == pytest.approx(ref_asl(logits, targets, clip=0.0), rel=1e-9)
    assert AsymmetricLoss(clip=None).clip == 0.0


def test_build_loss_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown loss 'nope'; valid names: dbfocal, bce, focal, asl"):
        build_loss("nope")
