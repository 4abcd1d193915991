"""The launch layer without a cluster: in-process and local processes (SLURM: test_slurm_pipeline)."""

import pytest

from cleanclip_core.errors import UserError
from cleanclip_core.launch import StageResources, run_stages
from cleanclip_core.results import config_hash

STAGE = "cleanclip_core.results:config_hash"
CALLS = [{"settings": {"lr": 0.001}}, {"settings": {"lr": 0.003}}]


@pytest.mark.parametrize("mode", ["debug", "local"])
def test_a_stage_runs_each_call_and_returns_the_results_in_order(mode, tmp_path):
    results = run_stages(STAGE, CALLS, mode=mode, folder=tmp_path, resources=StageResources(cpus_per_task=1), name="hash")
    assert results == [config_hash(call["settings"]) for call in CALLS]


def test_resources_come_from_a_mapping_and_default_the_rest():
    resources = StageResources.from_mapping({"gpus_per_node": 4, "mem_mb": 1000, "_cores": 1, "tmpdir": "/tmp"})
    assert (resources.gpus_per_node, resources.tasks_per_node, resources.mem_mb, resources.nodes) == (4, 4, 1000, 1)


def test_an_unknown_mode_or_a_failing_stage_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="launch mode 'cloud' is not one of debug, local, slurm"):
        run_stages(STAGE, CALLS, mode="cloud", folder=tmp_path, resources=StageResources(), name="hash")
    with pytest.raises(UserError, match=r"job .* failed; its log: .*"):
        run_stages(STAGE, [{"wrong": 1}], mode="local", folder=tmp_path, resources=StageResources(), name="bad")
