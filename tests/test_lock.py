"""uv.lock installs on both platforms a fresh machine may be: Linux x86_64 with PyPI's CUDA builds
of torch and torchvision (they run on a CPU too), and macOS on Apple silicon (CPU and mps)."""

import re
import tomllib

import pytest
from packaging.markers import Marker
from packaging.specifiers import SpecifierSet
from packaging.utils import parse_wheel_filename

from workflow import ROOT

LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
PYTHONS = list(SpecifierSet(LOCK["requires-python"]).filter(f"3.{minor}" for minor in range(8, 20)))
PLATFORMS = {
    "linux-x86_64": (r"manylinux_\d+_\d+_x86_64", {"sys_platform": "linux", "platform_machine": "x86_64"}),
    "macos-arm64": (r"macosx_\d+_\d+_arm64", {"sys_platform": "darwin", "platform_machine": "arm64"}),
}


def locked(name: str) -> dict:
    (package,) = [package for package in LOCK["package"] if package["name"] == name]
    return package


def installs_on(wheel_url: str, python: str, platform_pattern: str) -> bool:
    _, _, _, tags = parse_wheel_filename(wheel_url.rsplit("/", 1)[1])
    interpreters = {f"cp{python.replace('.', '')}", "py3"}
    return any(tag.interpreter in interpreters and re.fullmatch(platform_pattern, tag.platform) for tag in tags)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", ["torch", "torchvision"])
def test_the_lock_has_a_wheel_of_torch_for_every_python_on_each_platform(name, platform):
    pattern, _ = PLATFORMS[platform]
    wheels = [wheel["url"] for wheel in locked(name)["wheels"]]
    assert PYTHONS == ["3.11", "3.12", "3.13"]
    assert [python for python in PYTHONS if not any(installs_on(url, python, pattern) for url in wheels)] == []


def test_linux_keeps_the_cuda_builds_of_torch_and_macos_has_none():
    torch = locked("torch")
    assert "+" not in torch["version"] and "+" not in locked("torchvision")["version"]
    for platform, (_, environment) in PLATFORMS.items():
        environment = environment | {"python_full_version": "3.11.0", "python_version": "3.11"}
        dependencies = {
            dependency["name"] for dependency in torch["dependencies"]
            if Marker(dependency.get("marker", "python_version > '0'")).evaluate(environment)
        }
        cuda = {name for name in dependencies if name.startswith(("nvidia-", "cuda-"))}
        assert bool(cuda) == (platform == "linux-x86_64"), (platform, cuda)
