"""Stopping rules (design section 13): which epoch of a cleaning run to keep.

Every paper keeps the best clean top-1 among the epochs whose ASR@1 is at most 5% (the success
threshold, `evaluation.success_asr`), measured with the attacker's own trigger: an oracle, since a
defender has no trigger. A rule here is a registry entry that declares what it sees of a run, and
is handed only that: a defender's rule never sees an attack success rate. Each rule chooses among
the cleaning epochs (1 ... E), never the start.

A run's epochs are a frame with one row per cleaning epoch: `epoch`, the clean `top1` and
`asr_top1` of its checkpoint, `removed` (its ASR@1 is at most the success threshold) and `loss`,
the mean training loss of the epoch.
"""

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from cleanclip_core.registry import Registry

SUCCESS_ASR = 0.05  # the papers' threshold of a removed backdoor (ASR@1); the config's default
ATTACK_FLOOR = 0.5  # a start's ASR@1 below it: the backdoor never took; the config's default
TRIGGER_COLUMNS = ("asr_top1", "removed")  # what only the attacker's trigger can tell
LOSS_PLATEAU = 0.02  # relative change of the epoch's mean loss under which training has settled


@dataclass(frozen=True)
class StoppingRule:
    name: str
    choose: Callable[[pd.DataFrame], int]
    sees: tuple[str, ...]  # the columns of a run's epochs it is handed (`epoch` always)
    summary: str

    @property
    def defender(self) -> bool:
        """Whether a defender, who has no trigger, could apply it: it sees no attack success."""
        return not set(self.sees) & set(TRIGGER_COLUMNS)


def oracle(epochs: pd.DataFrame) -> int:
    """The papers' choice: the best top-1 among epochs whose backdoor is removed (the earliest on
    a tie); where no epoch gets there, the lowest ASR@1 (then the best top-1)."""
    removed = epochs[epochs.removed]
    if len(removed):
        return int(removed.sort_values(["top1", "epoch"], ascending=[False, True]).epoch.iloc[0])
    return int(epochs.sort_values(["asr_top1", "top1", "epoch"], ascending=[True, False, True]).epoch.iloc[0])


def last_epoch(epochs: pd.DataFrame) -> int:
    return int(epochs.epoch.max())


def best_clean_accuracy(epochs: pd.DataFrame) -> int:
    """The best clean top-1 on labelled clean images (the earliest on a tie)."""
    return int(epochs.sort_values(["top1", "epoch"], ascending=[False, True]).epoch.iloc[0])


def loss_plateau(epochs: pd.DataFrame) -> int:
    """The first epoch whose mean training loss changed by less than 2% from the epoch before:
    where cleaning has settled; the last epoch where it never does."""
    ordered = epochs.sort_values("epoch")
    change = (ordered.loss.diff().abs() / ordered.loss.shift().abs()).fillna(float("inf"))
    settled = ordered[change < LOSS_PLATEAU]
    return int(settled.epoch.iloc[0] if len(settled) else ordered.epoch.iloc[-1])


STOPPING_RULES = Registry("stopping rule", StoppingRule, (
    StoppingRule("oracle", oracle, ("top1", "asr_top1", "removed"), "best top-1 at ASR@1 <= the success threshold, with the attacker's trigger (the papers')"),
    StoppingRule("last_epoch", last_epoch, (), "the last epoch of the run"),
    StoppingRule("best_clean_accuracy", best_clean_accuracy, ("top1",), "best clean top-1 on labelled clean images"),
    StoppingRule("loss_plateau", loss_plateau, ("loss",), "first epoch whose mean training loss changed by < 2%"),
))


def choose_epochs(epochs: pd.DataFrame, success_asr: float = SUCCESS_ASR) -> dict[str, int]:
    """Every rule's chosen epoch of one run, each rule handed only the columns it sees."""
    epochs = epochs[epochs.epoch > 0].assign(removed=lambda frame: frame.asr_top1 <= success_asr)
    return {name: rule.choose(epochs[["epoch", *rule.sees]]) for name, rule in STOPPING_RULES.items()}


def stopping_choices(trajectories: pd.DataFrame, success_asr: float = SUCCESS_ASR) -> pd.DataFrame:
    """(run_id, rule, epoch): every rule's choice for every run of the trajectories (a frame of
    run_id plus a run's epochs' columns, the start as epoch 0)."""
    rows = [
        (run, rule, epoch)
        for run, epochs in trajectories.groupby("run_id", sort=True)
        for rule, epoch in choose_epochs(epochs, success_asr).items()
    ]
    return pd.DataFrame(rows, columns=["run_id", "rule", "epoch"]).astype({"epoch": "int64"})
