"""Damaged data and checkpoints heal: the stage that finds the damage fails with one line, and
the same command run again makes anew what it needs (a tiny study through Snakemake: one attack,
MMCL pretraining, one CleanCLIP run)."""

import copy

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from cleanclip_core import study
from cleanclip_core.config import validate_config
from cleanclip_core.results import run_id
from workflow import ONE_THREAD, ROOT, attack_folder, jobs_run, run_snakemake

CONFIG = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
CONFIG["study"] = {
    "name": "healing", "model": "tiny-rn", "attacks": ["badnet"], "pretrain_objectives": ["mmcl"],
    "clean_methods": ["cleanclip"], "cleaning_poisons": [0], "seeds": [0],
}
CONFIG["clean"]["epochs"] = 1
FULL = validate_config(copy.deepcopy(CONFIG))
PRETRAINED = f"results/runs/{run_id(study.pretrained_models(FULL).iloc[0].to_dict())}"
TARGET = f"results/runs/{run_id(study.cleaning_runs(FULL).iloc[0].to_dict())}/epoch_001/metrics.parquet"
DATASET = f"results/{CONFIG['dataset']['name']}"


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("healing")
    result = run_snakemake(workdir, CONFIG, TARGET, *ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_a_damaged_pretrained_model_is_set_aside_and_trained_anew_by_a_plain_rerun(tiny_study):
    weights = tiny_study / PRETRAINED / "model.pt"
    weights.write_bytes(weights.read_bytes()[:4000])  # a copy cut short
    failed = run_snakemake(tiny_study, CONFIG, TARGET, *ONE_THREAD)
    assert failed.returncode != 0
    assert f"{PRETRAINED}/model.pt is not a torch checkpoint" in failed.stderr
    assert "(set aside as model.pt.damaged: run again to make it anew)" in failed.stderr
    rerun = run_snakemake(tiny_study, CONFIG, TARGET, *ONE_THREAD)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Nothing to be done" not in rerun.stderr
    assert jobs_run(rerun.stderr) == {"pretrain": 1, "clean": 1, "evaluate_cleaned": 1, "total": 3}
    assert weights.stat().st_size > 4000
    assert "Nothing to be done" in run_snakemake(tiny_study, CONFIG, TARGET, "--dry-run").stdout


def test_an_image_zeroed_in_its_shard_is_named_and_a_plain_rerun_downloads_that_shard_again(tiny_study):
    poisoned = pq.read_table(tiny_study / attack_folder(CONFIG, "badnet") / "poisoned_manifest.parquet")
    key = poisoned.filter(poisoned["is_poison"])["key"][0].as_py()  # the trigger grid's first image
    index = pq.read_table(tiny_study / DATASET / "shard_index.parquet")
    row = index.filter(pc.equal(index["key"], key)).to_pylist()[0]
    shard = f"{DATASET}/shards/{row['shard']}.tar"
    with open(tiny_study / shard, "r+b") as tar:  # its size unchanged: the listing's size check passes
        tar.seek(row["offset"])
        tar.write(bytes(row["size"]))
    others = {path.name: path.stat().st_ino for path in (tiny_study / DATASET / "shards").iterdir() if not path.name.startswith(row["shard"])}
    grid = f"{attack_folder(CONFIG, 'badnet')}/trigger_grid.png"
    failed = run_snakemake(tiny_study, CONFIG, grid)
    assert failed.returncode != 0
    assert (
        f"error: shard file {shard}: the image of sample {key} cannot be decoded (Unsupported image file); "
        f"removed {DATASET}/shard_listing.parquet: the next run downloads shard {row['shard']} again, "
        f"the others are kept in {DATASET}/shards.partial"
    ) in failed.stderr
    assert "Traceback" not in failed.stderr
    rerun = run_snakemake(tiny_study, CONFIG, grid)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert jobs_run(rerun.stderr)["download"] == 1
    shards = tiny_study / DATASET / "shards"
    assert {name: (shards / name).stat().st_ino for name in others} == others  # not downloaded again
    with open(tiny_study / shard, "rb") as tar:
        tar.seek(row["offset"])
        assert tar.read(row["size"]) != bytes(row["size"])
