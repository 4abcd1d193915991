"""The rules' conda environments (envs/): each rule has one, and each pins uv.lock's versions."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from workflow import ROOT

ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
# Every env has them and uv.lock locks neither: the interpreter, and pip for the pip: section.
TOOLS = {"python", "pip"}
CONDA_TO_PYPI = {"pytorch": "torch", "python-duckdb": "duckdb", "matplotlib-base": "matplotlib"}


@pytest.fixture(scope="module")
def rule_envs() -> dict[str, Path | None]:
    """The env file Snakemake resolves for each rule that runs something (not `all`)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import OutputSettings, ResourceSettings

    settings = OutputSettings(quiet={Quietness.ALL}, enable_file_logging=False)
    with SnakemakeApi(settings) as api:
        workflow = api.workflow(ResourceSettings(), snakefile=ROOT / "Snakefile", workdir=ROOT)
        # The API has no public list of rules with their directives: _workflow is the parsed workflow.
        rules = [rule for rule in workflow._workflow.rules if not rule.norun]
        envs = {rule.name: rule.conda_env and rule.expand_conda_env({}).file for rule in rules}
    return {name: env and Path(env.get_path_or_uri(secret_free=True)).resolve() for name, env in envs.items()}


def specs(env_file: Path) -> list[tuple[str, str]]:
    """(PyPI name, version spec as written: '==1.0', '=3.11', '') of each conda and pip package."""
    found = []
    for dependency in yaml.safe_load(env_file.read_text())["dependencies"]:
        if isinstance(dependency, str):
            name, spec = re.fullmatch(r"([\w.-]+)\s*(.*)", dependency).groups()
            found.append((canonicalize_name(CONDA_TO_PYPI.get(name, name)), spec))
        else:
            for line in dependency["pip"]:
                requirement = Requirement(line)
                found.append((canonicalize_name(requirement.name), str(requirement.specifier)))
    return found


def python_minor(env_specs: list[tuple[str, str]]) -> str:
    (spec,) = [spec for name, spec in env_specs if name == "python"]
    return re.fullmatch(r"=(\d+\.\d+)", spec).group(1)


def locked_versions(python: str) -> dict[str, set[str]]:
    """The versions uv.lock resolves for an interpreter of this minor version (on linux x86_64)."""
    environment = {
        "python_version": python, "python_full_version": f"{python}.0",
        "sys_platform": "linux", "platform_machine": "x86_64",
    }
    versions = {}
    for package in LOCK["package"]:
        markers = package.get("resolution-markers")
        if markers is None or any(Marker(marker).evaluate(environment) for marker in markers):
            versions.setdefault(package["name"], set()).add(package["version"])
    return versions


def runtime_dependencies() -> set[str]:
    """Every package the project needs at run time, per uv.lock (not the dev group)."""
    packages = {package["name"]: package for package in LOCK["package"]}
    found, todo = set(), [PROJECT]
    while todo:
        for dependency in packages[todo.pop()].get("dependencies", []):
            if dependency["name"] not in found:
                found.add(dependency["name"])
                todo.append(dependency["name"])
    return found


def test_every_rule_names_an_env_file_that_exists(rule_envs):
    assert "pretrain" in rule_envs and "figures" in rule_envs
    missing = {rule: env for rule, env in rule_envs.items() if env is None or not env.is_file()}
    assert not missing


def test_every_env_file_is_used_by_a_rule(rule_envs):
    assert set(ENV_FILES) == set(rule_envs.values())


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda path: path.name)
def test_post_deploy_script_installs_the_project_into_the_env(env_file):
    script = env_file.with_name(f"{env_file.stem}.post-deploy.sh")
    assert "python -m pip install --no-deps --editable .\n" in script.read_text()


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda path: path.name)
def test_env_pins_python_minor_and_every_package_exactly(env_file):
    env_specs = specs(env_file)
    assert python_minor(env_specs) in SpecifierSet(LOCK["requires-python"])
    assert ("pip", "") in env_specs
    names = [name for name, _ in env_specs]
    assert not {name for name in names if names.count(name) > 1}
    pins = [(name, spec) for name, spec in env_specs if name not in TOOLS]
    assert not [(name, spec) for name, spec in pins if not re.fullmatch(r"==[^,]+", spec)]


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda path: path.name)
def test_env_pins_the_versions_uv_lock_resolves_for_its_python(env_file):
    env_specs = specs(env_file)
    locked = locked_versions(python_minor(env_specs))
    pins = [(name, spec.removeprefix("==")) for name, spec in env_specs if name not in TOOLS]
    # a name uv.lock lacks is the next test's failure
    differing = [(name, pin, locked[name]) for name, pin in pins if pin not in locked.get(name, {pin})]
    assert not differing


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda path: path.name)
def test_env_pins_only_runtime_dependencies_of_the_lock(env_file):
    unknown = {name for name, _ in specs(env_file)} - TOOLS - runtime_dependencies()
    assert not unknown
