"""tuner.running.pareto: objective parsing, Pareto fronts, crowding, hypervolume (pure numpy)."""

import math

import numpy as np
import pytest

from trainables.errors import ConfigError
from tuner.running.pareto import (
    OBJECTIVE_METRICS,
    Objective,
    crowding_distance,
    default_reference,
    hypervolume,
    hypervolume_curve,
    non_dominated_sort,
    pareto_mask,
    parse_objectives,
    rank_order,
    to_minimise,
)

ACC_PARAMS = (Objective("val_acc", "max"), Objective("params", "min"))
THREE = (Objective("val_acc", "max"), Objective("params", "min"), Objective("latency_ms", "min"))


def test_parse_objectives_strips_spaces_and_keeps_order():
    got = parse_objectives([" val_acc : max", "latency_ms:min ", "params:min"])
    assert got == (Objective("val_acc", "max"), Objective("latency_ms", "min"),
                   Objective("params", "min"))
    assert [o.text for o in got] == ["val_acc:max", "latency_ms:min", "params:min"]


@pytest.mark.parametrize(("texts", "expected"), [
    (["acc:max", "params:min"],
     "objectives: unknown metric 'acc' in 'acc:max'; valid: val_acc, "),
    (["val_acc:up", "params:min"], "objectives: mode must be max or min in 'val_acc:up'"),
    (["val_acc:MAX", "params:min"], "objectives: mode must be max or min in 'val_acc:MAX'"),
    (["val_acc", "params:min"], "objectives: 'val_acc' is not METRIC:MODE"),
    (["val_acc:max:min", "params:min"], "objectives: 'val_acc:max:min' is not METRIC:MODE"),
    ([3, "params:min"], "objectives: 3 is not METRIC:MODE"),
    (["val_acc:max"], "objectives: give 2 or 3 objectives, got 1"),
    ("val_acc:max", "objectives: give 2 or 3 objectives, got 1"),
    ([], "objectives: give 2 or 3 objectives, got 0"),
    (["val_acc:max", "params:min", "flops:min", "latency_ms:min"],
     "objectives: give 2 or 3 objectives, got 4"),
    (["val_acc:max", "params:min", "val_acc:min"], "objectives: 'val_acc' given twice"),
])
def test_parse_objectives_errors_are_one_line(texts, expected):
    with pytest.raises(ConfigError) as info:
        parse_objectives(texts)
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_unknown_metric_lists_every_valid_one_and_suggests():
    with pytest.raises(ConfigError) as info:
        parse_objectives(["val_ac:max", "params:min"])
    assert ", ".join(OBJECTIVE_METRICS) in str(info.value)
    assert "did you mean 'val_acc'?" in str(info.value)


def test_objective_checks_itself():
    with pytest.raises(ConfigError, match="mode must be max or min in 'params:down'"):
        Objective("params", "down")


def test_to_minimise_negates_only_max_columns():
    got = to_minimise(np.array([[0.9, 100.0], [0.5, 50.0]]), ACC_PARAMS)
    assert got.tolist() == [[-0.9, 100.0], [-0.5, 50.0]]


def test_non_dominated_sort_mixed_modes():
    # (val_acc max, params min)
    values = np.array([
        [0.90, 500.0],  # 0: front 0 (best acc)
        [0.80, 100.0],  # 1: front 0 (cheapest)
        [0.85, 300.0],  # 2: front 0 (between)
        [0.80, 400.0],  # 3: front 1 (beaten by 2 and 1)
        [0.70, 450.0],  # 4: front 2 (beaten by 3)
        [np.nan, 10.0],  # 5: NaN: in no front
        [0.90, 500.0],  # 6: equal to 0: neither dominates, so front 0 too
    ])
    fronts = non_dominated_sort(values, ACC_PARAMS)
    assert [f.tolist() for f in fronts] == [[0, 1, 2, 6], [3], [4]]
    assert pareto_mask(values, ACC_PARAMS).tolist() == [True, True, True, False, False, False,
                                                        True]
    # flipping a mode flips who wins: maximising params makes 0 and 6 beat everything
    flipped = (Objective("val_acc", "max"), Objective("params", "max"))
    assert non_dominated_sort(values, flipped)[0].tolist() == [0, 6]


def test_empty_and_all_nan():
    assert non_dominated_sort(np.zeros((0, 2)), ACC_PARAMS) == []
    assert rank_order(np.full((3, 2), np.nan), ACC_PARAMS).tolist() == []
    assert pareto_mask(np.full((2, 2), np.nan), ACC_PARAMS).tolist() == [False, False]
    with pytest.raises(ValueError, match=r"expected an \(n, 2\) array"):
        non_dominated_sort(np.zeros((3, 3)), ACC_PARAMS)


def test_crowding_distance_by_hand():
    front = np.array([[0.9, 400.0], [0.8, 100.0], [0.85, 300.0], [0.88, 350.0]])
    got = crowding_distance(front, ACC_PARAMS)
    assert math.isinf(got[0]) and math.isinf(got[1])  # the extremes of each objective
    # row 2: acc neighbours 0.8 and 0.88 over range 0.1; params neighbours 100, 350 over 300
    assert got[2] == pytest.approx(0.08 / 0.1 + 250 / 300)
    assert got[3] == pytest.approx(0.05 / 0.1 + 100 / 300)
    assert crowding_distance(front[:2], ACC_PARAMS).tolist() == [math.inf, math.inf]
    assert crowding_distance(front[:1], ACC_PARAMS).tolist() == [math.inf]


def test_crowding_distance_ignores_a_constant_objective():
    front = np.array([[0.9, 5.0], [0.7, 5.0], [0.8, 5.0]])
    got = crowding_distance(front, ACC_PARAMS)
    assert got.tolist() == [math.inf, math.inf, pytest.approx(1.0)]


def test_rank_order_front_then_crowding_then_index():
    values = np.array([
        [0.70, 450.0],  # 0: front 2
        [0.85, 300.0],  # 1: front 0, interior (crowding 0.08/0.1 + 350/400 = 1.675)
        [0.80, 400.0],  # 2: front 1, alone
        [0.90, 500.0],  # 3: front 0, extreme
        [np.nan, 1.0],  # 4: left out
        [0.80, 100.0],  # 5: front 0, extreme
        [0.88, 450.0],  # 6: front 0, interior (0.05/0.1 + 200/400 = 1.0)
    ])
    assert rank_order(values, ACC_PARAMS).tolist() == [3, 5, 1, 6, 2, 0]


def test_hypervolume_2d_by_hand():
    values = np.array([[0.9, 3.0], [0.5, 1.0], [0.6, 4.0]])  # row 2 is dominated by row 0
    # minimised: (-0.9, 3), (-0.5, 1); reference (0, 5) -> (0, 5)
    # [-0.9,-0.5) x [3,5): 0.4 * 2 = 0.8; [-0.5, 0) x [1,5): 0.5 * 4 = 2.0
    assert hypervolume(values, ACC_PARAMS, (0.0, 5.0)) == pytest.approx(2.8)
    # a row no better than the reference in one objective adds nothing
    worse = np.vstack([values, [0.95, 6.0], [0.0, 0.5]])
    assert hypervolume(worse, ACC_PARAMS, (0.0, 5.0)) == pytest.approx(2.8)
    assert hypervolume(np.zeros((0, 2)), ACC_PARAMS, (0.0, 5.0)) == 0.0


def test_hypervolume_3d_by_hand():
    minimise = tuple(Objective(m, "min") for m in ("params", "flops", "latency_ms"))
    # two boxes to (4, 4, 4): [1,4]x[2,4]x[2,4] = 3*2*2 = 12 and [2,4]x[1,4]x[1,4] = 2*3*3 = 18,
    # overlapping in [2,4]x[2,4]x[2,4] = 8: union 22
    values = np.array([[1.0, 2.0, 2.0], [2.0, 1.0, 1.0]])
    assert hypervolume(values, minimise, (4.0, 4.0, 4.0)) == pytest.approx(22.0)
    # a maximised third objective in its own direction: the same box
    mixed = (*minimise[:2], Objective("images_per_s", "max"))
    assert hypervolume(values * [1, 1, -1], mixed, (4.0, 4.0, -4.0)) == pytest.approx(22.0)


@pytest.mark.parametrize("objectives", [ACC_PARAMS, THREE])
def test_hypervolume_matches_monte_carlo(objectives):
    rng = np.random.default_rng(7)
    k = len(objectives)
    values = rng.random((40, k))
    reference = tuple(0.0 if o.mode == "max" else 1.0 for o in objectives)
    exact = hypervolume(values, objectives, reference)
    samples = rng.random((200_000, k))  # uniform in the unit box between points and reference
    lo = to_minimise(values, objectives)
    s = to_minimise(samples, objectives)
    covered = np.zeros(len(s), dtype=bool)
    for row in lo:
        covered |= (s >= row).all(axis=1)
    estimate = covered.mean()  # the box has volume 1
    assert 0.1 < exact < 1.0
    assert exact == pytest.approx(estimate, abs=0.005)


def test_hypervolume_is_the_union_so_a_dominated_point_adds_nothing():
    rng = np.random.default_rng(3)
    values = rng.random((30, 3))
    reference = (0.0, 1.0, 1.0)
    full = hypervolume(values, THREE, reference)
    front = values[pareto_mask(values, THREE)]
    assert hypervolume(front, THREE, reference) == pytest.approx(full)
    assert hypervolume(values[::-1], THREE, reference) == pytest.approx(full)


def test_hypervolume_curve_is_monotone_and_ends_at_the_total():
    rng = np.random.default_rng(11)
    vectors = rng.random((60, 3))
    reference = (0.0, 1.0, 1.0)
    points = [(float(x), v) for x, v in zip(np.cumsum(rng.integers(1, 5, 60)), vectors,
                                            strict=True)]
    curve = hypervolume_curve(points, THREE, reference)
    assert [x for x, _ in curve] == [x for x, _ in points]
    volumes = [v for _, v in curve]
    assert all(b >= a for a, b in zip(volumes, volumes[1:], strict=False))
    assert volumes[-1] == pytest.approx(hypervolume(vectors, THREE, reference))
    assert volumes[9] == pytest.approx(hypervolume(vectors[:10], THREE, reference))
    assert volumes[0] > 0


def test_default_reference_rule():
    objectives = (Objective("val_acc", "max"), Objective("params", "min"),
                  Objective("images_per_s", "max"))
    values = np.array([[0.9, 100.0, 50.0], [0.5, 300.0, 10.0], [np.nan, 200.0, 30.0]])
    # acc max -> 0; params: worst 300 + 10% of range 200; images_per_s: worst 10 - 10% of 40
    assert default_reference(values, objectives) == pytest.approx((0.0, 320.0, 6.0))
    minimised_acc = (Objective("train_acc", "min"), Objective("latency_ms", "min"))
    # range 0: 10% of |value|; value 0 too: 1.0
    assert default_reference(np.array([[0.3, 4.0]]), minimised_acc) == (1.0, pytest.approx(4.4))
    assert default_reference(np.array([[0.3, 0.0]]), minimised_acc) == (1.0, 1.0)
    with pytest.raises(ValueError, match="no finite value of latency_ms"):
        default_reference(np.array([[0.3, np.nan]]), minimised_acc)


def test_default_reference_lies_beyond_every_point():
    rng = np.random.default_rng(5)
    values = rng.random((25, 3)) * [1, 1e6, 30]
    reference = default_reference(values, THREE)
    m, r = to_minimise(values, THREE), to_minimise(np.array([reference]), THREE)[0]
    assert (m[:, 1:] < r[1:]).all()  # strictly: every trial adds volume
    assert hypervolume(values, THREE, reference) > 0
