"""The stages that only read and write tables, images and figures import no torch: a job of
theirs costs its work, not the seconds and the 800 MB of importing torch and open_clip."""

import ast
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from workflow import ROOT

LIGHT_SCRIPTS = [
    "generate_corpus", "download", "manifest", "poison", "unpoisoned_manifest", "cleaning_set",
    "preparation_summary", "results_database", "figures", "overview", "detect_training", "detection_summary",
]

REPORT_HEAVY_MODULES = """
import sys
heavy = sorted({"torch", "torchvision", "open_clip"} & set(sys.modules))
print(" ".join(heavy))
"""


def script_imports(name: str) -> str:
    """A workflow script's top-level imports: the script itself needs Snakemake's `snakemake`."""
    tree = ast.parse((ROOT / "workflow_scripts" / f"{name}.py").read_text())
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(ast.unparse(node) for node in imports)


def heavy_modules_after(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code + REPORT_HEAVY_MODULES], capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return result.stdout.strip()


@pytest.mark.parametrize("name", LIGHT_SCRIPTS)
def test_light_stage_script_imports_no_torch(name):
    assert heavy_modules_after(script_imports(name)) == ""


def test_poisoning_a_manifest_imports_no_torch(shapes_shards, tmp_path):
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(shapes_shards.manifest, manifest)
    attack = {"type": "badnet", "target_label": "star", "n_poisons": 3, "seed": 0}
    poison = (
        "from cleanclip_core.poison import write_poisoned_manifest\n"
        f"write_poisoned_manifest({str(manifest)!r}, {str(tmp_path / 'poisoned.parquet')!r}, "
        f"attack_name='badnet', attack_config={attack!r})\n"
    )
    assert heavy_modules_after(poison) == ""
