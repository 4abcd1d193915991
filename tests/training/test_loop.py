"""The training loop on real data: resume after a real kill, DDP equivalence, bad input."""

import datetime
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cleanclip_core.attacks import get_attack
from cleanclip_core.errors import UserError
from cleanclip_core.data.cleaning_set import with_class_labels
from cleanclip_core.models import create_model, normalization_for
from cleanclip_core.objectives import ObjectiveNetwork
from cleanclip_core.poison import poison_manifest
from cleanclip_core.training import loop
from cleanclip_core.training.checkpoints import load_resume_state, save_weights
from cleanclip_core.training.finished import FINISHED, PARTIAL, RESUME_STATE
from cleanclip_core.training.loop import Recipe, TrainingData, TrainSettings, train, training_step
from cleanclip_core.training.optim import adamw

ATTACK = {
    "type": "badnet", "target_label": "star", "n_poisons": 6, "seed": 0,
    "trigger": {"patch_size": 35, "pattern": "fixed", "location": "fixed"},
}
SETTINGS = TrainSettings(
    model="tiny-vit", objective={"mmcl": 1.0, "inmodal": 1.0}, epochs=2, batch_size=4, lr=1e-3,
    warmup_steps=3, weight_decay=0.1, seed=0, synonyms="corpus",
)
TRAIN_IN_A_PROCESS = """
import json, sys
from cleanclip_core.training.loop import TrainingData, TrainSettings, train
settings, data, out = json.loads(sys.argv[1])
train(TrainSettings(**settings), TrainingData(**data), out)
"""


@pytest.fixture(scope="module")
def training_data(shapes_shards, tmp_path_factory) -> TrainingData:
    root = tmp_path_factory.mktemp("training")
    poisoned = poison_manifest(
        shapes_shards.manifest, get_attack("badnet"), attack_name="badnet", target_label="star",
        n_poisons=6, seed=0,
    )
    pq.write_table(poisoned, root / "poisoned.parquet")
    pq.write_table(shapes_shards.shard_index, root / "shard_index.parquet")
    pq.write_table(with_class_labels(poisoned, shapes_shards.manifest, pq.read_table(shapes_shards.corpus.train_labels)), root / "labelled.parquet")
    return TrainingData(root / "poisoned.parquet", root / "shard_index.parquet", shapes_shards.shards_dir, ATTACK)


def start_training(data: TrainingData, out) -> subprocess.Popen:
    arguments = json.dumps([asdict(SETTINGS), {k: str(v) if k != "attack" else v for k, v in asdict(data).items()}, str(out)])
    return subprocess.Popen([sys.executable, "-c", TRAIN_IN_A_PROCESS, arguments], stderr=subprocess.PIPE, text=True)


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_a_run_killed_in_epoch_two_resumes_to_the_same_weights(training_data, tmp_path):
    straight = start_training(training_data, tmp_path / "straight")
    killed = start_training(training_data, tmp_path / "killed")
    while not (tmp_path / "killed" / PARTIAL / RESUME_STATE).exists():
        assert killed.poll() is None, killed.stderr.read()
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert straight.wait() == 0, straight.stderr.read()
    # Nothing outside partial/: a workflow manager deleting the job's outputs deletes no progress.
    assert [path.name for path in (tmp_path / "killed").iterdir()] == [PARTIAL]
    assert load_resume_state(tmp_path / "killed" / PARTIAL / RESUME_STATE)["epochs_done"] == 1

    resumed = start_training(training_data, tmp_path / "killed")
    assert resumed.wait() == 0, resumed.stderr.read()
    assert_same_weights(weights(tmp_path / "straight/model.pt"), weights(tmp_path / "killed/model.pt"))
    losses = [pq.read_table(tmp_path / run / "train_log.parquet")["loss"] for run in ("straight", "killed")]
    assert losses[0].equals(losses[1])
    assert not (tmp_path / "killed" / PARTIAL / RESUME_STATE).exists()


class Stopped(Exception):
    """A run stopped right after committing an epoch, as if killed there."""


def stop_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Make runs stop once `epoch` is committed (its resume state written)."""
    save = loop.save_resume_state

    def save_then_stop(*args, **kwargs) -> None:
        save(*args, **kwargs)
        if kwargs["epochs_done"] == epoch:
            raise Stopped

    monkeypatch.setattr(loop, "save_resume_state", save_then_stop)


def assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_a_run_resumes_with_another_number_of_data_loader_processes(training_data, tmp_path, monkeypatch, caplog):
    train(SETTINGS, training_data, tmp_path / "straight")
    with monkeypatch.context() as patch, pytest.raises(Stopped):
        stop_after_epoch(patch, 1)
        train(SETTINGS, training_data, tmp_path / "run")
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        train(SETTINGS, training_data, tmp_path / "run", num_workers=1)
    assert f"resuming {tmp_path / 'run'} after epoch 1" in caplog.messages
    assert_same_weights(weights(tmp_path / "straight/model.pt"), weights(tmp_path / "run/model.pt"))


ROBUST_PRETRAINING = {
    "roclip": replace(SETTINGS, objective={"roclip": 1.0}, method="roclip", options={"pool_size": 6, "break_epoch": 1}),
    "roclip_aug": replace(SETTINGS, objective={"roclip": 1.0}, method="roclip_aug", options={"pool_size": 6, "break_epoch": 1}),
    "safeclip": replace(
        SETTINGS, objective={"safeclip": 1.0}, method="safeclip", epochs=4,
        options={"inmodal_epochs": 1, "clip_epochs": 1, "warmup_lr": 5e-6, "safe_posterior": 0.9, "ratio_step": 0.1, "ratio_cap": 0.85},
    ),
}


@pytest.mark.parametrize("method", sorted(ROBUST_PRETRAINING))
def test_a_robust_pretraining_run_resumes_with_its_state_to_the_same_weights(method, training_data, tmp_path, monkeypatch, caplog):
    """RoCLIP's pool (matching every epoch; on augmented pairs too) and SafeCLIP's safe share
    (split from epoch 3) survive the resume: stopped after the last epoch but one, the run ends as
    a straight one."""
    settings = ROBUST_PRETRAINING[method]
    with caplog.at_level(logging.INFO):
        train(settings, training_data, tmp_path / "straight")
    with monkeypatch.context() as patch, pytest.raises(Stopped):
        stop_after_epoch(patch, settings.epochs - 1)
        train(settings, training_data, tmp_path / "run")
    train(settings, training_data, tmp_path / "run")
    assert_same_weights(weights(tmp_path / "straight/model.pt"), weights(tmp_path / "run/model.pt"))
    if method == "safeclip":
        splits = [m for m in caplog.messages if m.startswith("SafeCLIP epoch")]
        assert [m.split(":")[0] for m in splits] == ["SafeCLIP epoch 3", "SafeCLIP epoch 4"]
        assert re.search(r"\d+ of \d+ pairs safe \(.*%\), \d+ of 6 poisons among them", splits[0])


def train_on_two_ranks(rank: int, runs: list[tuple[TrainSettings, TrainingData, str]], store: str) -> None:
    """This rank's part of each of `runs` (settings, data, output folder), one after the other."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)  # two ranks share the machine
    try:
        for settings, data, out_dir in runs:
            train(settings, data, out_dir)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def roclip_runs(training_data, tmp_path_factory):
    """RoCLIP matching in both epochs of 7 steps, its pool of 12 captions no multiple of the
    batch of 8, so that a batch in another order evicts other captions: trained in one process
    (`one`), in two (`two`), and in one until epoch 1 then resumed in two (`resumed`)."""
    root = tmp_path_factory.mktemp("roclip_runs")
    settings = replace(ROBUST_PRETRAINING["roclip"], batch_size=8, options={"pool_size": 12, "break_epoch": 1})
    train(settings, training_data, root / "one")
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Stopped):
        stop_after_epoch(patch, 1)
        train(settings, training_data, root / "resumed")
    # Spawned, not forked: a forked rank can deadlock on locks that the parent's threads held.
    mp.spawn(train_on_two_ranks, args=([(settings, training_data, root / run) for run in ("two", "resumed")], root / "store"), nprocs=2)
    return root


def step_losses(run) -> list[float]:
    return pq.read_table(run / "train_log.parquet")["loss"].to_pylist()


def relative_distance(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> float:
    """The L2 distance of all the weights, relative to the expected weights' norm."""
    expected, actual = (torch.cat([tensors[name].flatten().double() for name in expected]) for tensors in (expected, actual))
    return float((actual - expected).norm() / expected.norm())


def test_roclip_in_two_processes_has_the_loss_of_one_process_at_every_step(roclip_runs):
    one, two = step_losses(roclip_runs / "one"), step_losses(roclip_runs / "two")
    assert len(one) == len(two) == 14
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5, list(zip(one, two))


def test_roclip_resumed_in_two_processes_ends_as_the_one_process_run(roclip_runs):
    one, resumed = step_losses(roclip_runs / "one"), step_losses(roclip_runs / "resumed")
    assert one[:7] == resumed[:7]  # the first epoch, in one process
    assert max(abs(a - b) for a, b in zip(one, resumed)) < 1e-5, list(zip(one, resumed))
    # Relative to all the weights: the attention's key biases get no gradient but rounding noise,
    # which AdamW turns into steps of the learning rate's size in either run.
    distance = relative_distance(weights(roclip_runs / "one/model.pt"), weights(roclip_runs / "resumed/model.pt"))
    assert distance < 1e-4, distance


def test_a_run_resumed_with_another_number_of_processes_says_what_that_changes(training_data, tmp_path, monkeypatch, caplog):
    with monkeypatch.context() as patch, pytest.raises(Stopped):
        stop_after_epoch(patch, 1)
        train(SETTINGS, training_data, tmp_path)
    state_file = tmp_path / PARTIAL / RESUME_STATE
    state = load_resume_state(state_file)
    assert state["world_size"] == 1
    torch.save(state | {"world_size": 2}, state_file)  # as a run of two processes leaves it
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        train(SETTINGS, training_data, tmp_path)
    assert f"resuming {tmp_path / PARTIAL} with 1 processes, 2 before" in caplog.text
    assert f"resuming {tmp_path} after epoch 1" in caplog.messages


@pytest.mark.skipif(not shutil.which("c++"), reason="torch.compile's CPU backend (inductor) needs a C++ compiler")
def test_torch_compile_trains_to_the_losses_of_eager_mode(training_data, tmp_path):
    settings = replace(SETTINGS, objective={"mmcl": 1.0}, epochs=1)  # compiling takes minutes on a CPU: the smallest graph
    losses = {}
    for torch_compile in (False, True):
        train(settings, training_data, tmp_path / str(torch_compile), torch_compile=torch_compile)
        losses[torch_compile] = pq.read_table(tmp_path / str(torch_compile) / "train_log.parquet")["loss"].to_pylist()
    # the same steps; fused kernels round differently in the last bits, which AdamW's steps carry on
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-5)
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_a_partial_run_under_other_settings_is_discarded_with_a_warning(training_data, tmp_path, monkeypatch, caplog):
    earlier = replace(SETTINGS, objective={"mmcl": 1.0}, epochs=3)
    with monkeypatch.context() as patch, pytest.raises(Stopped):
        stop_after_epoch(patch, 2)
        train(earlier, training_data, tmp_path, keep_every_epoch=True)
    assert (tmp_path / PARTIAL / "epoch_002.pt").is_file()

    with caplog.at_level(logging.WARNING, logger=loop.__name__):
        train(replace(earlier, lr=2e-3, epochs=1), training_data, tmp_path, keep_every_epoch=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["epoch_001.pt", "model.pt", PARTIAL, "train_log.parquet"]
    log = pq.read_table(tmp_path / "train_log.parquet").to_pandas()
    assert list(log.step) == list(range(15)) and set(log.epoch) == {1}
    assert log.lr.max() == pytest.approx(2e-3)
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.message == f"discarding the partial run in {tmp_path / PARTIAL}: epochs 3→1, lr 0.001→0.002 changed"


def test_a_finished_run_whose_outputs_were_deleted_publishes_them_again_without_training(training_data, tmp_path, monkeypatch, caplog):
    """As Snakemake reruns a job it did not take (it was killed or interrupted while the job ran):
    it deletes the outputs first. Under other settings, the finished run is discarded."""
    one_epoch, run = replace(SETTINGS, epochs=1), tmp_path / "run"
    train(one_epoch, training_data, run, keep_every_epoch=True)
    published = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    assert sorted(path.name for path in (run / PARTIAL).iterdir()) == ["epoch_001.pt", FINISHED, "model.pt", "train_log.parquet"]
    for name in published:
        (run / name).unlink()
    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger=loop.__name__):
        patch.setattr(loop, "training_step", None)  # a step would fail
        assert train(one_epoch, training_data, run, keep_every_epoch=True) == run / "epoch_001.pt"
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == published
    assert f"{run}: finished earlier with these settings; publishing the files kept in {PARTIAL}/, no epoch trained" in caplog.messages

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        train(replace(one_epoch, lr=2e-3), training_data, run, keep_every_epoch=True)
    assert caplog.messages[0] == f"discarding the finished run in {run / PARTIAL}: lr 0.001→0.002 changed"
    assert any(": epoch 1/1 " in message for message in caplog.messages)


@pytest.mark.parametrize("start", ["init_weights", "pretrained"])
def test_a_run_starts_from_its_weights_file_or_pretrained_tag(training_data, local_tag, tmp_path, start):
    tag, path = local_tag
    still = replace(SETTINGS, epochs=1, lr=0.0)  # a run at learning rate 0 ends where it started
    final = train(still, training_data, tmp_path / "run", **{start: path if start == "init_weights" else tag})
    assert_same_weights(weights(path), weights(final))


def test_a_partial_run_from_other_starting_weights_is_discarded(training_data, local_tag, tmp_path, monkeypatch, caplog):
    tag, path = local_tag
    one_epoch = replace(SETTINGS, epochs=1)
    with monkeypatch.context() as patch, pytest.raises(Stopped):
        stop_after_epoch(patch, 1)
        train(one_epoch, training_data, tmp_path, init_weights=path)
    with caplog.at_level(logging.WARNING, logger=loop.__name__):
        train(one_epoch, training_data, tmp_path, pretrained=tag)
    assert caplog.messages == [f"discarding the partial run in {tmp_path / PARTIAL}: init_weights, pretrained None→'local' changed"]


def test_step_log_has_every_step_with_its_loss_terms(training_data, tmp_path):
    train(replace(SETTINGS, epochs=1), training_data, tmp_path)
    log = pq.read_table(tmp_path / "train_log.parquet").to_pandas()
    assert list(log.step) == list(range(15))  # 60 pairs, batch 4
    assert {"loss", "loss_mmcl", "loss_inmodal", "lr", "logit_scale", "samples_per_s"} <= set(log.columns)
    assert (log.loss - log.loss_mmcl - log.loss_inmodal).abs().max() < 1e-5
    assert (log.logit_scale <= 100 + 1e-4).all()


def test_keeping_every_epoch_writes_one_weights_file_per_epoch_and_names_the_last_model(training_data, tmp_path, caplog):
    run = tmp_path / "clean_method=cleanclip/lr=0.003"
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        final = train(replace(SETTINGS, objective={"mmcl": 1.0}), training_data, run, keep_every_epoch=True)
    progress = [message for message in caplog.messages if "epoch" in message]
    assert [re.fullmatch(r"cleanclip/0.003: epoch (\d)/2 \((\d+) steps\): loss [\d.]+, \d+ samples/s, [\d.]+ min left", line).groups()
            for line in progress] == [("1", "15"), ("2", "30")]
    assert final == run / "epoch_002.pt"
    assert sorted(p.name for p in run.glob("*.pt")) == ["epoch_001.pt", "epoch_002.pt", "model.pt"]
    assert (run / "model.pt").samefile(final)  # a second name, not a copy


def test_a_loss_that_becomes_nan_stops_with_a_clear_message(training_data, tmp_path):
    model = create_model("tiny-vit")
    with torch.no_grad():
        model.visual.proj.fill_(float("nan"))
    save_weights(tmp_path / "nan.pt", model)
    with pytest.raises(UserError, match=r"the loss became nan at epoch 1, step 0: training stopped, keeping the checkpoint of epoch 0"):
        train(SETTINGS, training_data, tmp_path / "run", init_weights=tmp_path / "nan.pt")
    assert not (tmp_path / "run" / "model.pt").exists()


def test_init_weights_of_another_architecture_or_missing_are_user_errors(training_data, tmp_path):
    save_weights(tmp_path / "tiny.pt", create_model("tiny-vit"))
    with pytest.raises(UserError, match="does not fit RN50; was it saved from another architecture"):
        create_model("RN50", tmp_path / "tiny.pt")
    with pytest.raises(UserError, match="missing.pt does not exist"):
        train(SETTINGS, training_data, tmp_path / "run", init_weights=tmp_path / "missing.pt")


def test_a_checkpoint_holding_other_objects_than_weights_is_one_line_and_never_loaded(tmp_path):
    torch.save({"state_dict": {"made": datetime.date(2026, 1, 1)}}, tmp_path / "objects.pt")
    with pytest.raises(UserError, match="objects.pt is damaged, or holds objects other than weights, which are never loaded$"):
        create_model("tiny-vit", tmp_path / "objects.pt")


def test_a_batch_larger_than_the_data_is_a_user_error(training_data, tmp_path):
    with pytest.raises(UserError, match="batch size 64 exceeds the 60 training pairs"):
        train(replace(SETTINGS, batch_size=64), training_data, tmp_path)


def random_batch(size: int = 8) -> dict[str, torch.Tensor]:
    """A batch as the loader gives it: 8-bit images, tokens."""
    generator = torch.Generator().manual_seed(0)
    images = lambda: torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=generator)  # noqa: E731
    texts = lambda: torch.randint(1, 49407, (size, 16), generator=generator)  # noqa: E731
    return {"image": images(), "text": texts(), "augmented_image": images(), "augmented_text": texts()}


def step_and_gradients(network, model, batch, normalize=None) -> tuple[float, dict[str, torch.Tensor]]:
    optimizer = adamw(network, 1e-3, 0.1)
    recipe = Recipe(SETTINGS.objective, normalize or normalization_for(model), ("augmented_image",), ("augmented_text",))
    terms = training_step(network, model, optimizer, batch, recipe, torch.device("cpu"))
    return float(terms["loss"]), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_step_scales_and_normalizes_the_8_bit_images_of_the_batch():
    batch = random_batch()
    normalized = batch | {name: normalization_for(create_model("tiny-vit"))(batch[name] / 255) for name in ("image", "augmented_image")}
    results = []
    for given, normalize in ((batch, None), (normalized, lambda images: images)):
        model = create_model("tiny-vit", seed=0)
        results.append(step_and_gradients(ObjectiveNetwork(model), model, given, normalize))
    (loss, gradients), (expected_loss, expected_gradients) = results
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, expected_gradients[name], rtol=1e-4, atol=1e-6)


def test_supervised_cleaning_trains_a_head_on_the_labels_and_keeps_only_the_clip_weights(training_data, tmp_path):
    labelled = replace(training_data, manifest=training_data.manifest.with_name("labelled.parquet"))
    settings = replace(SETTINGS, objective={"supervised": 1.0}, epochs=3, lr=3e-3)
    final = train(settings, labelled, tmp_path)
    log = pq.read_table(tmp_path / "train_log.parquet").to_pandas()
    first, last = log.loss_supervised.iloc[:5].mean(), log.loss_supervised.iloc[-5:].mean()
    assert first > last, (first, last)
    assert weights(final).keys() == create_model("tiny-vit").state_dict().keys()


def test_supervised_cleaning_of_unlabelled_pairs_is_a_user_error(training_data, tmp_path):
    with pytest.raises(UserError, match="the supervised objective needs labelled training pairs"):
        train(replace(SETTINGS, objective={"supervised": 1.0}), training_data, tmp_path)


def test_a_roclip_pool_larger_than_the_downloaded_pairs_is_refused_before_training(training_data, tmp_path):
    # A URL list's pairs are known only once downloaded: the stage runs the method's check (Defense.check).
    settings = replace(SETTINGS, objective={"roclip": 1.0}, method="roclip", options={"pool_size": 21845, "break_epoch": 2})
    with pytest.raises(UserError) as error:
        train(settings, training_data, tmp_path)
    assert str(error.value) == (
        "config: defenses.roclip.pool_size: a pool of 21845 captions is more than the 60 training pairs of an epoch, so "
        "images are matched to the random vectors it starts with; set it to at most 60"
    )
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "partial/train_log.parquet").exists()
