"""The robust pretraining methods' checks of their options against the run (Defense.check): run
at DAG build, so without torch."""

from collections.abc import Iterator

from cleanclip_core.defenses import MethodRun


def roclip_problems(run: MethodRun) -> Iterator[str]:
    """A pool larger than an epoch's captions keeps random vectors for images to match, and a
    `break_epoch` beyond the run never matches: plain MMCL under RoCLIP's name."""
    pool_size, break_epoch, epochs = run.options["pool_size"], run.options["break_epoch"], run.settings["epochs"]
    if run.pairs is not None and pool_size > run.pairs:
        yield (
            f"config: defenses.{run.name}.pool_size: a pool of {pool_size} captions is more than the {run.pairs} "
            f"training pairs of an epoch, so images are matched to the random vectors it starts with; set it to at most {run.pairs}"
        )
    if break_epoch > epochs:
        yield (
            f"config: defenses.{run.name}.break_epoch: {break_epoch} is beyond the {epochs} epochs of pretraining, so "
            f"RoCLIP never matches a caption and trains plain MMCL; set it to at most {epochs}"
        )


def safeclip_problems(run: MethodRun) -> Iterator[str]:
    """SafeCLIP's warm-ups leave epochs for its split."""
    epochs, warmup = run.settings["epochs"], run.options["inmodal_epochs"] + run.options["clip_epochs"]
    if epochs <= warmup:
        yield (
            f"config: pretrain.epochs: SafeCLIP's {epochs} epochs leave none after its {warmup} warm-up epochs "
            f"(defenses.{run.name}.inmodal_epochs + clip_epochs): raise the epochs or shorten the warm-ups"
        )
