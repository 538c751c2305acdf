"""ASHA's rungs and HyperBand's halvings break ties on the metric by its pair (val_acc by
val_loss), as the final pick does (tests/test_results.py). Unit tests feed the scheduler
synthetic results, beside Ray's own scheduler fed the same; the contract suite runs both
through real Ray Tune."""

import math

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from tuner.running.hyperband import FilledHyperBand
from tuner.running.schedulers import (
    ASHA,
    TIE_BREAK_CLIP,
    TIE_BREAK_WEIGHT,
    HyperBand,
    tie_broken,
)

CONTINUE, STOP, PAUSE = TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.PAUSE


class FakeTrial:
    """What ASHA uses of a Ray Trial: its id (HyperBand also reads status and is_saving)."""

    def __init__(self, trial_id):
        self.trial_id = trial_id


def decisions(cls, results, metric="val_acc", mode="max", rf=2):
    """Feed (trial, val_acc, val_loss) at epoch 1, in order, to a fresh scheduler of ``cls``
    with a rung at epoch 1 and reduction factor ``rf``; its decision for each."""
    s = cls(metric=metric, mode=mode, time_attr="training_iteration", max_t=rf * rf,
            grace_period=1, reduction_factor=rf)
    out = {}
    for trial_id, acc, loss in results:
        trial = FakeTrial(trial_id)
        s.on_trial_add(None, trial)
        out[trial_id] = s.on_trial_result(None, trial, {"training_iteration": 1,
                                                        "val_acc": acc, "val_loss": loss})
    return out


def test_trials_tied_on_val_acc_are_cut_by_val_loss_where_rays_promotes_them_all():
    tied = [("a", 1.0, 0.40), ("b", 1.0, 0.10), ("c", 1.0, 0.30), ("d", 1.0, 0.05)]
    assert set(decisions(AsyncHyperBandScheduler, tied).values()) == {CONTINUE}
    # a: first at the rung; b beats a; c is below the median of a and b; d beats them all
    assert decisions(ASHA, tied) == {"a": CONTINUE, "b": CONTINUE, "c": STOP, "d": CONTINUE}


def test_val_acc_still_decides_whenever_it_differs():
    results = [("a", 0.99, 0.01), ("b", 1.0, 5.0), ("c", 0.98, 0.0)]
    assert decisions(ASHA, results) == decisions(AsyncHyperBandScheduler, results) \
        == {"a": CONTINUE, "b": CONTINUE, "c": STOP}


def test_a_loss_metric_is_tie_broken_by_the_higher_accuracy():
    results = [("a", 0.90, 0.2), ("b", 0.99, 0.2), ("c", 0.92, 0.2)]  # c: below the median
    assert decisions(ASHA, results, "val_loss", "min") == {"a": CONTINUE, "b": CONTINUE,
                                                           "c": STOP}


def test_the_nudge_is_below_one_image_of_any_validation_split_and_copies():
    result = {"val_acc": 0.5, "val_loss": 1e9, "training_iteration": 3}
    nudged = tie_broken(result, "val_acc", "max")
    assert result["val_acc"] == 0.5 and nudged["training_iteration"] == 3
    clipped = TIE_BREAK_WEIGHT * TIE_BREAK_CLIP
    assert 0 < result["val_acc"] - nudged["val_acc"] == pytest.approx(clipped)
    assert TIE_BREAK_WEIGHT * TIE_BREAK_CLIP < 1e-6  # clipped: 1e9 moves it by 1e-7 only
    assert tie_broken({"val_loss": 0.3, "val_acc": 0.9}, "val_loss", "min")["val_loss"] < 0.3


@pytest.mark.parametrize("result", [{"val_acc": 0.9}, {"val_acc": 0.9, "val_loss": math.nan},
                                    {"val_acc": 0.9, "val_loss": math.inf},
                                    {"val_loss": 0.1}])
def test_without_a_finite_pair_or_the_metric_the_result_is_unchanged(result):
    assert tie_broken(result, "val_acc", "max") is result


def test_a_metric_without_a_pair_or_a_number_is_unchanged():
    result = {"images_per_s": 900.0, "val_loss": 0.1, "val_acc": "n/a"}
    assert tie_broken(result, "images_per_s", "max") is result
    assert tie_broken(result, "val_acc", "max") is result  # not a number: Ray's to judge
    assert tie_broken(result, None, "max") is result  # no metric set yet


class FakeController:
    """What HyperBand's halving uses of Tune's controller: stopping a paused trial."""

    def __init__(self):
        self.stopped = []

    def stop_trial(self, trial):
        self.stopped.append(trial.trial_id)


def hyperband_halving(cls, losses):
    """Nine trials in HyperBand's first bracket (max_t 9, eta 3: a milestone at epoch 1),
    each reporting val_acc 1.0 with its loss at epoch 1, in order; the ids the halving kept."""
    s = cls(metric="val_acc", mode="max", time_attr="training_iteration", max_t=9,
            reduction_factor=3, num_trials=len(losses))
    controller, trials = FakeController(), []
    for i in range(len(losses)):
        trial = FakeTrial(f"t{i}")
        trial.status, trial.is_saving = "PENDING", False
        s.on_trial_add(controller, trial)
        trials.append(trial)
    for trial, loss in zip(trials, losses, strict=True):
        trial.status = "RUNNING"
        action = s.on_trial_result(controller, trial, {"training_iteration": 1,
                                                       "val_acc": 1.0, "val_loss": loss})
        trial.status = "PAUSED" if action == PAUSE else trial.status
        if action == STOP:  # the trial that reported last, if the halving dropped it
            controller.stopped.append(trial.trial_id)
    assert len(controller.stopped) == 6  # 9 -> ceil(9 / 3)
    return {t.trial_id for t in trials} - set(controller.stopped)


def test_hyperbands_halving_keeps_the_lowest_val_loss_among_trials_tied_on_val_acc():
    losses = [0.05, 0.10, 0.15, 0.50, 0.60, 0.70, 0.80, 0.90, 0.95]
    assert hyperband_halving(HyperBand, losses) == {"t0", "t1", "t2"}
    # FilledHyperBand alone (Ray's sort) keeps the tied trials it was given last
    assert hyperband_halving(FilledHyperBand, losses) == {"t6", "t7", "t8"}
