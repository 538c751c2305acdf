"""When a trial's report carries a checkpoint (tuner.running.trial.checkpoint_due), the rule
both the one-process and the data-parallel trial use."""

import pytest

from tuner.running.trial import TrialOptions, checkpoint_due


@pytest.mark.parametrize("every", [1, 2, 3])
def test_only_every_nth_epoch(every):
    options = TrialOptions(checkpoint_every=every)
    due = [e for e in range(1, 10) if checkpoint_due(e, options, since_last_s=10.0,
                                                        last_cost_s=0.0)]
    assert due == list(range(every, 10, every))


def test_a_save_over_budget_skips_the_periodic_checkpoint():
    options = TrialOptions(checkpoint_budget=0.05)
    assert checkpoint_due(3, options, since_last_s=2.0, last_cost_s=0.1)  # 5% of 2 s: due
    assert not checkpoint_due(3, options, since_last_s=1.9, last_cost_s=0.1)


@pytest.mark.parametrize("budget", [1.0, 2.0])
def test_budget_one_never_skips_even_when_saving_took_longer_than_the_epoch(budget):
    """Under load a tiny model's epoch (0.1 s) can take less than its save (0.3 s); a pausing
    scheduler resumes from the last checkpoint, so a skipped one would repeat epochs."""
    options = TrialOptions(checkpoint_budget=budget)
    assert checkpoint_due(4, options, since_last_s=0.1, last_cost_s=0.3)
    assert not checkpoint_due(4, TrialOptions(checkpoint_budget=0.99), since_last_s=0.1,
                              last_cost_s=0.3)
