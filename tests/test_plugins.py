"""Plugins: the README's example module, from outside the package, through a short study; entry
points of an installed package; and jobs that import the checkout's code, not the environment's."""

import importlib
import re
import shutil
import subprocess
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from cleanclip_core.registry import REGISTRY_MODULES, Registry, resolve
from test_presets import merged
from workflow import ONE_THREAD, ROOT, TINY_CONFIG, run_snakemake

README = (ROOT / "README.md").read_text()
PLUGIN = re.search(r"```python\n# my_plugin\.py.*?\n(.*?)```", README, re.S).group(1)
OVERLAY = yaml.safe_load(re.search(r"```yaml\n# my_plugin_study\.yaml.*?\n(.*?)```", README, re.S).group(1))
SMALL = TINY_CONFIG | {
    "study": {"model": "tiny-rn", "pretrain_objectives": ["mmcl"], "seeds": [0]},
    "pretrain": {"epochs": 1, "batch_size": 20, "warmup_steps": 1},
    "clean": {"epochs": 2, "batch_size": 10, "warmup_steps": 1, "n_clean": 40, "lrs": [0.001]},
    "execution": {"evaluation_batch_size": 64, "download_threads": 4, "keep_weights": "last"},
}


def python(code: str, cwd, **environment) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter: loading plugins changes a process's registries for good."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)} | environment
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("plugin_study")
    (workdir / "my_plugin.py").write_text(PLUGIN)
    config = merged(merged(yaml.safe_load((ROOT / "config.yaml").read_text()), OVERLAY), SMALL)
    config["attacks"]["gaussian_patch"]["n_poisons"] = 6
    result = run_snakemake(workdir, config, *ONE_THREAD, timeout_s=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_a_plugins_attack_and_cleaning_term_run_through_a_study(plugin_run):
    metrics = pq.read_table(next((plugin_run / "results/runs").glob("**/clean_method=cleanclip_l2sp/**/epoch_001/metrics.parquet")))
    assert set(metrics["attack"].to_pylist()) == {"gaussian_patch"}
    log = pq.read_table(next((plugin_run / "results/runs").glob("**/clean_method=cleanclip_l2sp/**/train_log.parquet")))
    # The weights move from the start from the first step on: the term is counted, and above 0.
    assert pc.max(log["loss_l2_sp"]).as_py() > 0
    poisoned = pq.read_table(next(plugin_run.glob("results/tiny/gaussian_patch/*/poisoned_manifest.parquet")))
    assert pc.sum(poisoned["is_poison"]).as_py() == 6


def test_keeping_only_the_last_weights_deletes_the_others_once_evaluated(plugin_run):
    run = next((plugin_run / "results/runs").glob("**/clean_method=cleanclip_l2sp/**/train_log.parquet")).parent
    assert sorted(path.name for path in run.glob("epoch_*.pt")) == ["epoch_002.pt"]
    assert (run / "epoch_001/metrics.parquet").is_file() and (run / "epoch_002/metrics.parquet").is_file()
    again = run_snakemake(plugin_run, yaml.safe_load((plugin_run / "test_config.yaml").read_text()), "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_a_plugins_options_are_checked_by_the_schema_of_its_entry(tmp_path):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    result = python(
        "from cleanclip_core.config import validate_config\n"
        "validate_config({'plugins': ['my_plugin'], 'attacks': {'g': {'type': 'gaussian_patch', 'trigger': {'share': 2}}}})",
        tmp_path,
    )
    assert "config: attacks.g.trigger.share: 2 is greater than the maximum of 1" in result.stderr


def test_an_installed_package_offers_its_plugin_through_an_entry_point(tmp_path):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    info = tmp_path / "my_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[cleanclip_core.plugins]\nmine = my_plugin\n")
    result = python(
        "from cleanclip_core.attacks import ATTACKS\nfrom cleanclip_core.terms import TERMS\n"
        "print('gaussian_patch' in ATTACKS, 'l2_sp' in TERMS)",
        ROOT, PYTHONPATH=str(tmp_path),
    )
    assert result.stdout.split() == ["True", "True"], result.stderr


def test_a_plugin_that_is_not_there_is_one_line_naming_it(tmp_path):
    result = run_snakemake(tmp_path, TINY_CONFIG | {"plugins": ["not_my_plugin"]}, "-n")
    assert result.returncode == 1
    assert "error: plugin not_my_plugin: cannot import it (No module named 'not_my_plugin')" in result.stderr


def test_a_plugin_that_fails_at_import_is_one_line_naming_it_and_where_it_failed(tmp_path):
    (tmp_path / "my_plugin.py").write_text("import os\n\nSHARE = x + 1\n")
    result = run_snakemake(tmp_path, TINY_CONFIG | {"plugins": ["my_plugin"]}, "-n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: plugin my_plugin: NameError at {tmp_path / 'my_plugin.py'}:3: name 'x' is not defined"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("source", "failure"), [
    ("def f(:\n    pass\n", "SyntaxError at {plugin}:1: invalid syntax"),
    ("ENTRIES = []\nraise RuntimeError('no GPU here')\n", "RuntimeError at {plugin}:2: no GPU here"),
    ("import os\nimport not_installed_dependency\n", "ModuleNotFoundError at {plugin}:2: No module named 'not_installed_dependency'"),
])
def test_a_job_that_loads_a_failing_plugin_ends_with_the_same_line(tmp_path, source, failure):
    (tmp_path / "my_plugin.py").write_text(source)
    assert failed_job_lines(tmp_path, "from cleanclip_core.attacks import ATTACKS", "sorted(ATTACKS)") == [
        f"error: plugin my_plugin: {failure.format(plugin=tmp_path / 'my_plugin.py')}"]


def failed_job_lines(folder, imports, statement):
    """The standard error lines of a job's process that runs `statement` inside the stage's
    reporting and fails: the plugin my_plugin in `folder` comes through the environment, loaded
    the first time the process reads a registry."""
    result = python(
        f"{imports}\nfrom cleanclip_core.reporting import reported_step\nwith reported_step():\n    {statement}",
        ROOT, PYTHONPATH=str(folder), CLEANCLIP_PLUGINS="my_plugin",
    )
    assert result.returncode == 1
    return result.stderr.strip().splitlines()


def test_wrong_function_paths_of_a_plugins_entries_are_refused_by_the_dry_run(tmp_path):
    plugin = PLUGIN.replace('"my_plugin:build_gaussian_patch"', '"my_plugin:build_gausian_patch"')
    plugin = plugin.replace('"my_plugin:l2_sp"', '"my_plugin.l2_sp"')
    plugin += 'ENTRIES.append(Term("l1_sp", "my_plugins:l1_sp"))\n'
    (tmp_path / "my_plugin.py").write_text(plugin)
    result = run_snakemake(tmp_path, TINY_CONFIG | {"plugins": ["my_plugin"]}, "-n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-3:] == [
        "error: plugin my_plugin: attack 'gaussian_patch': trigger: 'my_plugin:build_gausian_patch': module my_plugin "
        "defines no build_gausian_patch; did you mean 'build_gaussian_patch'?",
        "error: plugin my_plugin: loss term 'l2_sp': loss: 'my_plugin.l2_sp' is not module:function",
        "error: plugin my_plugin: loss term 'l1_sp': loss: 'my_plugins:l1_sp': there is no module my_plugins",
    ]


def test_a_function_path_into_a_module_not_imported_yet_is_checked_without_running_it(tmp_path):
    (tmp_path / "my_losses.py").write_text(
        "import torch\nraise RuntimeError('ran')\n\n\ndef l2_sp(inputs):\n    return 0\n\n\nif True:\n    l1_sp = l2_sp\n"
    )
    (tmp_path / "my_plugin.py").write_text(
        "from cleanclip_core.terms import Term\n\n"
        "ENTRIES = [Term(name, f'my_losses:{name}') for name in ('l2_sp', 'l1_sp', 'l0_sp')]\n"
    )
    result = python(
        "import sys\nfrom cleanclip_core.config import validate_config\nfrom cleanclip_core.errors import UserError\n"
        "try:\n    validate_config({'plugins': ['my_plugin']})\nexcept UserError as error:\n    print(error)\n"
        "print('torch' in sys.modules, 'my_losses' in sys.modules)",
        ROOT, PYTHONPATH=str(tmp_path),
    )
    assert result.stdout.splitlines() == [
        "plugin my_plugin: loss term 'l0_sp': loss: 'my_losses:l0_sp': module my_losses defines no l0_sp; did you mean 'l2_sp'?",
        "False False",
    ], result.stderr


def test_a_job_whose_entry_names_a_module_that_fails_at_import_ends_with_one_line_naming_it(tmp_path):
    (tmp_path / "my_losses.py").write_text("import os\nraise RuntimeError('ran')\n\n\ndef l2_sp(inputs):\n    return 0\n")
    (tmp_path / "my_plugin.py").write_text("from cleanclip_core.terms import Term\n\nENTRIES = [Term('l2_sp', 'my_losses:l2_sp')]\n")
    imports = "from cleanclip_core.registry import resolve\nfrom cleanclip_core.terms import TERMS"
    assert failed_job_lines(tmp_path, imports, "resolve(TERMS.entry('l2_sp').loss)") == [
        f"error: my_losses:l2_sp: RuntimeError at {tmp_path / 'my_losses.py'}:2: ran"]


def test_every_registered_entry_names_functions_that_exist():
    for module in REGISTRY_MODULES:
        importlib.import_module(module)
    for registry in Registry._all:
        for entry in registry.values():
            assert registry.path_problems(entry) == [], entry
            assert all(callable(resolve(getattr(entry, field))) for field in registry.paths if getattr(entry, field))
    assert {registry.kind for registry in Registry._all if registry.paths} == {"attack", "loss term", "view", "cleaning method", "detector"}


def test_two_clones_sharing_one_environment_each_run_their_own_code(tmp_path):
    # The environment's cleanclip_core is the repository's own (an editable install); the second
    # clone's marks every process that imports its copy.
    clone = tmp_path / "clone"
    clone.mkdir()
    for part in ("Snakefile", "rules", "workflow_scripts", "envs", "cleanclip_core", "config.yaml"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        copy(ROOT / part, clone / part)
    marks = tmp_path / "imports.txt"
    with (clone / "cleanclip_core/__init__.py").open("a") as init:
        init.write(f"\nimport os\nwith open({str(marks)!r}, 'a') as marks:\n    marks.write(f'{{os.getpid()}}\\n')\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(clone / "Snakefile"), "--directory", str(workdir),
               "--cores", "1", "results/tiny/corpus/urls.tsv", "--configfile", str(workdir / "config.yaml")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # The DAG's process and the job's (which generated the corpus) both imported the clone's code.
    assert len(set(marks.read_text().split())) >= 2
