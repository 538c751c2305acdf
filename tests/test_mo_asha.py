"""tuner.running.mo_asha: the multi-objective ASHA scheduler. Unit tests feed it synthetic
results (no Ray cluster); one end-to-end run goes through real Ray Tune."""

import math
import pickle

import numpy as np
import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from trainables.errors import ConfigError
from tuner.running.mo_asha import MultiObjectiveASHA
from tuner.running.pareto import Objective, pareto_mask

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
ACC_PARAMS = (Objective("val_acc", "max"), Objective("params", "min"))


class FakeTrial:
    """What a scheduler uses of a Ray Trial: its id and status."""

    def __init__(self, trial_id, status="RUNNING"):
        self.trial_id, self.status = str(trial_id), status


class FakeController:
    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials


def sched(**kw):
    kw = {"objectives": ACC_PARAMS, "max_t": 27, "grace_period": 1, "reduction_factor": 3,
          **kw}
    return MultiObjectiveASHA(**kw)


def feed(s, trial_id, t, acc, params, **extra):
    return s.on_trial_result(None, FakeTrial(trial_id),
                             {"training_iteration": t, "val_acc": acc, "params": params, **extra})


@pytest.mark.parametrize(("max_t", "grace", "rf"), [(27, 1, 3), (100, 1, 4), (10, 2, 2),
                                                    (16, 1, 4), (5, 5, 3)])
def test_milestones_are_rays(max_t, grace, rf):
    ray_asha = AsyncHyperBandScheduler(metric="m", mode="max", max_t=max_t, grace_period=grace,
                                       reduction_factor=rf)
    ray_milestones = [m for m, _ in reversed(ray_asha._brackets[0]._rungs)]
    assert sched(max_t=max_t, grace_period=grace, reduction_factor=rf).milestones \
        == ray_milestones


def test_dominated_trial_stops_and_non_dominated_ones_continue():
    s = sched(reduction_factor=2)
    assert feed(s, "a", 1, 0.90, 100) == CONTINUE  # first at the rung
    assert feed(s, "b", 1, 0.50, 200) == STOP  # dominated by a
    assert feed(s, "c", 1, 0.95, 300) == CONTINUE  # better acc than a: front with a
    assert feed(s, "d", 1, 0.80, 50) == CONTINUE  # cheapest: an extreme of the front
    assert feed(s, "e", 1, 0.85, 150) == STOP  # dominated by a; 3 ahead of it, 2 may be
    assert "Iter 1: 5 recorded" in s.debug_string()


def test_second_rung_ranks_only_its_own_records():
    s = sched(reduction_factor=3)
    for trial, acc in [("a", 0.9), ("b", 0.8), ("c", 0.7)]:
        feed(s, trial, 1, acc, 100)
    assert feed(s, "c", 2, 0.1, 100) == CONTINUE  # between rungs 1 and 3
    assert feed(s, "c", 3, 0.75, 100) == CONTINUE  # first at rung 3, though worst at rung 1
    assert feed(s, "a", 3, 0.70, 100) == STOP  # beaten by c at rung 3


def test_three_objectives():
    three = (*ACC_PARAMS, Objective("latency_ms", "min"))
    s = sched(objectives=three, reduction_factor=2)
    r = {"training_iteration": 1}
    assert s.on_trial_result(None, FakeTrial(1), {**r, "val_acc": 0.9, "params": 10,
                                                  "latency_ms": 5.0}) == CONTINUE
    assert s.on_trial_result(None, FakeTrial(2), {**r, "val_acc": 0.9, "params": 10,
                                                  "latency_ms": 6.0}) == STOP
    assert s.on_trial_result(None, FakeTrial(3), {**r, "val_acc": 0.8, "params": 10,
                                                  "latency_ms": 1.0}) == CONTINUE


def test_ties_continue_like_ashas_cutoff():
    s = sched(reduction_factor=2)
    assert feed(s, "a", 1, 0.9, 100) == CONTINUE
    assert feed(s, "b", 1, 0.9, 100) == CONTINUE  # equal to the cut-off: kept, as in ASHA


@pytest.mark.parametrize("seed", range(8))
def test_single_objective_decides_as_ray_asha_up_to_the_rounded_cutoff(seed):
    """Same random result streams into Ray's ASHA and into MO-ASHA with one objective. The
    documented relation: MO-ASHA continues a trial exactly when at most floor((m-1)/rf) of the
    m earlier records beat it, so it never continues one ASHA stops, and where ASHA continues
    one MO-ASHA stops, the value lies between the two records ASHA interpolates between."""
    rng = np.random.default_rng(seed)
    rf = (2, 3, 4)[seed % 3]
    mode = ("max", "min")[seed % 2]
    ray_asha = AsyncHyperBandScheduler(metric="val_loss", mode=mode, max_t=27, grace_period=1,
                                       reduction_factor=rf)
    mo = sched(objectives=[Objective("val_loss", mode)], reduction_factor=rf)
    milestones = set(mo.milestones)
    trials = [FakeTrial(i) for i in range(60)]
    for trial in trials:
        ray_asha.on_trial_add(None, trial)
    next_t = {trial.trial_id: 1 for trial in trials}
    records: dict[int, list[float]] = {}  # milestone -> values recorded there, in order
    same = differ = 0
    while next_t:
        trial = trials[int(rng.choice([int(i) for i in next_t]))]
        t = next_t[trial.trial_id]
        value = float(rng.normal())
        result = {"training_iteration": t, "val_loss": value}
        a = ray_asha.on_trial_result(None, trial, result)
        b = mo.on_trial_result(None, trial, result)
        if t in milestones and t < 27:
            earlier = np.array(records.setdefault(t, []))
            signed = earlier if mode == "max" else -earlier
            v = value if mode == "max" else -value
            beaten_by = int((signed > v).sum())
            m = len(earlier)
            assert (b == CONTINUE) == (m == 0 or beaten_by <= math.floor((m - 1) / rf))
            if a != b:
                assert (a, b) == (CONTINUE, STOP)
                ranked = np.sort(signed)  # ascending; ASHA interpolates at h
                h = (m - 1) * (1 - 1 / rf)
                assert ranked[math.floor(h)] <= v < ranked[math.ceil(h)]
            records[t].append(value)
        else:
            assert a == b  # no decision to make: both CONTINUE, or both STOP at max_t
        same += a == b
        differ += a != b
        if a == STOP:
            del next_t[trial.trial_id]
        else:
            next_t[trial.trial_id] = t + 1
    assert same > 20 * differ  # the rounding matters rarely
    assert mo._num_stopped >= ray_asha._num_stopped > 0


def test_infeasible_results_continue_and_are_not_recorded():
    s = sched(reduction_factor=2)
    assert feed(s, "x", 1, 0.99, 1, stop_reason="infeasible") == CONTINUE
    s.on_trial_complete(None, FakeTrial("x"), {"training_iteration": 1, "val_acc": 0.99,
                                               "params": 1, "stop_reason": "infeasible"})
    assert feed(s, "a", 1, 0.5, 100) == CONTINUE  # still the first at rung 1
    assert "Iter 1: 1 recorded" in s.debug_string()


@pytest.mark.parametrize("bad", [{"val_acc": float("nan")}, {"val_acc": None},
                                 {"val_acc": "0.9"}, {"params": float("nan")}])
def test_a_vector_that_cannot_be_ranked_stops_at_a_rung_only(bad):
    s = sched()
    base = {"val_acc": 0.9, "params": 100}
    result = {**base, **bad}
    assert feed(s, "a", 1, 0.9, 100) == CONTINUE
    assert s.on_trial_result(None, FakeTrial("a"), {**result, "training_iteration": 2}) \
        == CONTINUE  # between rungs 1 and 3
    assert s.on_trial_result(None, FakeTrial("a"), {**result, "training_iteration": 3}) == STOP
    assert feed(s, "c", 3, 0.1, 1e9) == CONTINUE  # a was not recorded at 3: c is first


def test_missing_objective_and_time():
    s = sched()
    trial = FakeTrial("a")
    assert s.on_trial_result(None, trial, {"training_iteration": 1, "val_acc": 0.9,
                                           "params": 1}) == CONTINUE
    assert s.on_trial_result(None, trial, {"training_iteration": 2, "val_acc": 0.9}) == CONTINUE
    assert s.on_trial_result(None, trial, {"training_iteration": 3, "val_acc": 0.9}) == STOP
    assert s.on_trial_result(None, trial, {"val_acc": 0.9, "params": 1}) == CONTINUE  # no time
    assert s.on_trial_result(None, trial, {"training_iteration": 27}) == STOP  # budget spent


def test_completion_records_like_ray():
    s = sched(reduction_factor=2)
    s.on_trial_complete(None, FakeTrial("a"), {"training_iteration": 1, "val_acc": 0.9,
                                               "params": 10})
    assert feed(s, "b", 1, 0.5, 20) == STOP  # dominated by a, recorded at its completion
    s.on_trial_complete(None, FakeTrial("gone"), None)  # no result: nothing happens


def test_save_restore_and_pickle_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    s = sched(reduction_factor=2)
    for i in range(12):
        feed(s, i, 1, float(rng.random()), float(rng.integers(1, 100)))
    path = tmp_path / "scheduler.pkl"
    s.save(str(path))
    restored = sched(reduction_factor=2)
    restored.restore(str(path))
    copied = pickle.loads(pickle.dumps(s))
    assert restored.debug_string() == s.debug_string() == copied.debug_string()
    assert "num_stopped=0" not in s.debug_string()
    for i in range(12, 30):  # the same next results get the same decisions
        acc, params = float(rng.random()), float(rng.integers(1, 100))
        assert feed(restored, i, 1, acc, params) == feed(s, i, 1, acc, params) \
            == feed(copied, i, 1, acc, params)
    with pytest.raises(ValueError, match="holds the state of a scheduler with"):
        sched(reduction_factor=3).restore(str(path))


def test_choose_trial_to_run_as_fifo():
    s = sched()
    running, paused, pending = FakeTrial(1), FakeTrial(2, "PAUSED"), FakeTrial(3, "PENDING")
    assert s.choose_trial_to_run(FakeController([running, paused, pending])) is pending
    assert s.choose_trial_to_run(FakeController([running, paused])) is paused
    assert s.choose_trial_to_run(FakeController([running])) is None


def test_search_properties_are_accepted_and_ignored():
    s = sched()
    assert s.set_search_properties(None, None) is True
    assert s.set_search_properties("val_acc", "max") is True
    assert s.metric is None  # so Ray does not demand it in every result
    assert s.objectives == ACC_PARAMS


@pytest.mark.parametrize(("kw", "message"), [
    ({"reduction_factor": 1}, "reduction_factor: must be > 1, got 1"),
    ({"max_t": 1, "grace_period": 2}, "max_t: must be >= grace_period"),
    ({"grace_period": 0}, "grace_period: must be > 0"),
    ({"objectives": ()}, "objectives: one or more Objective"),
    ({"objectives": ["val_acc:max"]}, "objectives: one or more Objective"),
    ({"objectives": (*ACC_PARAMS, Objective("val_acc", "min"))}, "a metric given twice"),
])
def test_bad_settings(kw, message):
    with pytest.raises(ConfigError, match=message):
        sched(**kw)


# --- end to end through real Ray Tune ---------------------------------------------------------

MAX_T = 9
N_FRONT = 6  # trials 0-5 trade accuracy for params; trials 6-11 are dominated by all of them
N_TRIALS = 2 * N_FRONT


def design(i):
    if i < N_FRONT:
        return 0.5 + 0.05 * i, 1.0 + i
    return 0.3 + 0.01 * (i - N_FRONT), 12.0 + (i - N_FRONT)


@pytest.mark.ray
def test_end_to_end_through_ray_tune(ray_local, tmp_path):
    """12 trials, 2 at a time, started in order (grid search, FIFO choice): a dominated trial
    reaches rung 1 after at least 5 front trials were recorded there, so it ranks 6th or worse
    where at most floor(10/3)+1 = 4 go on; the cheapest and the most accurate trial are
    extremes of the front at every rung, so they always go on."""
    from ray import tune

    table = [design(i) for i in range(N_TRIALS)]  # captured by value: Ray's workers cannot import
    max_t = MAX_T  # this test module, so the trainable must not refer to its globals

    def synthetic_trainable(config):
        quality, params = table[config["i"]]
        for t in range(1, max_t + 1):
            tune.report({"val_acc": quality * (1 - 1 / (t + 1)), "params": params})

    scheduler = MultiObjectiveASHA(objectives=ACC_PARAMS, max_t=MAX_T, grace_period=1,
                                   reduction_factor=3)
    tuner = tune.Tuner(synthetic_trainable,
                       param_space={"i": tune.grid_search(list(range(N_TRIALS)))},
                       tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=1),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="mo",
                                                 verbose=0))
    grid = tuner.fit()
    assert not grid.errors
    assert f"Iter 1: {N_TRIALS} recorded" in scheduler.debug_string()  # Ray used this one
    epochs = {r.config["i"]: r.metrics["training_iteration"] for r in grid}
    assert sorted(epochs) == list(range(N_TRIALS))
    assert all(epochs[i] == 1 for i in range(N_FRONT, N_TRIALS))  # dominated: stopped at rung 1
    assert epochs[0] == epochs[N_FRONT - 1] == MAX_T  # the extremes of the front
    # every trial that used the full budget is on the Pareto front of the designed trials
    full = [i for i, e in epochs.items() if e == MAX_T]
    on_front = pareto_mask(np.array([design(i) for i in range(N_TRIALS)]), ACC_PARAMS)
    assert all(on_front[i] for i in full)
