"""The stopping rules on hand-made trajectories: what each chooses, and what each may see."""

import pandas as pd

from cleanclip_core.stopping import STOPPING_RULES, choose_epochs, stopping_choices


def trajectory(top1, asr_top1, loss=None, run_id="run") -> pd.DataFrame:
    """A run's start (epoch 0) and cleaning epochs 1 ... E, with their mean losses (1 / epoch)."""
    epochs = range(len(top1))
    loss = loss or [float("nan")] + [1 / epoch for epoch in epochs[1:]]
    return pd.DataFrame({"run_id": run_id, "epoch": epochs, "top1": top1, "asr_top1": asr_top1, "loss": loss})


def test_asr_that_rises_again_late_catches_the_last_epoch_not_the_oracle():
    # Verma et al.'s MMCL+SSL case: the backdoor goes away by epoch 2 and comes back.
    run = trajectory(top1=[0.60, 0.55, 0.58, 0.59, 0.61], asr_top1=[0.99, 0.30, 0.03, 0.20, 0.70])
    chosen = choose_epochs(run)
    assert chosen["oracle"] == 2
    assert chosen["last_epoch"] == 4 and run.asr_top1[4] == 0.70
    assert chosen["best_clean_accuracy"] == 4  # accuracy alone prefers the returned backdoor


def test_the_oracle_takes_the_best_accuracy_at_a_removed_backdoor_earliest_on_a_tie():
    run = trajectory(top1=[0.5, 0.62, 0.70, 0.70, 0.72], asr_top1=[0.9, 0.04, 0.05, 0.01, 0.06])
    assert choose_epochs(run)["oracle"] == 2


def test_without_a_removed_backdoor_the_oracle_takes_the_lowest_asr():
    run = trajectory(top1=[0.5, 0.6, 0.4, 0.55], asr_top1=[0.9, 0.5, 0.2, 0.2])
    assert choose_epochs(run)["oracle"] == 3  # ASR 20% twice: the better top-1


def test_the_loss_plateau_is_the_first_epoch_within_two_percent_of_the_one_before():
    run = trajectory(top1=[0.5] * 5, asr_top1=[0.9] * 5, loss=[float("nan"), 2.0, 1.5, 1.48, 1.47])
    assert choose_epochs(run)["loss_plateau"] == 3
    never = trajectory(top1=[0.5] * 3, asr_top1=[0.9] * 3, loss=[float("nan"), 2.0, 1.0])
    assert choose_epochs(never)["loss_plateau"] == 2


def test_the_start_is_never_chosen():
    run = trajectory(top1=[0.9, 0.5, 0.4], asr_top1=[0.0, 0.5, 0.6])
    assert 0 not in choose_epochs(run).values()


def test_a_defenders_choice_does_not_depend_on_the_attack_success_rate():
    run = trajectory(top1=[0.5, 0.6, 0.7, 0.65], asr_top1=[0.9, 0.01, 0.5, 0.02])
    reversed_asr = run.assign(asr_top1=run.asr_top1.to_numpy()[::-1])
    defenders = [name for name, rule in STOPPING_RULES.items() if rule.defender]
    assert sorted(STOPPING_RULES.keys() - defenders) == ["oracle"]
    assert [choose_epochs(run)[name] for name in defenders] == [choose_epochs(reversed_asr)[name] for name in defenders]
    assert choose_epochs(run)["oracle"] != choose_epochs(reversed_asr)["oracle"]


def test_every_run_gets_every_rules_choice():
    runs = pd.concat([trajectory([0.5, 0.6, 0.7], [0.9, 0.1, 0.0], run_id=name) for name in ("a", "b")])
    choices = stopping_choices(runs)
    assert len(choices) == 2 * len(STOPPING_RULES) and set(choices.run_id) == {"a", "b"}
