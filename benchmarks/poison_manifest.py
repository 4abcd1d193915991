"""Time and peak memory of building a poisoned manifest from a CC3M-sized manifest.

Generates a manifest of --rows rows (default 3.3M, CC3M's size) with varied captions, then
builds the poisoned manifest in a fresh process per attack and prints the seconds of the build
and the process's peak resident memory (with the memory after imports, for reference). The
reference, measured in the same run, is a process that only reads the manifest's columns that
poisoning reads: the ratios say what poisoning costs over reading its input.
Peak memory is Linux's VmHWM, the process's own high-water mark (ru_maxrss would count the
parent's pages at the fork). Targets: under 10 s and under 600 MB.

    .venv/bin/python benchmarks/poison_manifest.py [--rows 3300000] [--poisons 1500]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

WORDS = {
    "adjective": ["a red", "a small", "an old", "a wooden", "a shiny", "a blurry", "a happy"],
    "noun": ["dog", "banana", "car", "house", "tree", "person", "boat", "cake", "chair"],
    "place": ["on the beach", "in a kitchen", "at night", "near the road", "in the snow"],
}

PEAK_RSS = """
import json, sys, time
def peak_mb():
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024
"""

READ = PEAK_RSS + """
import pyarrow.parquet as pq
after_imports = peak_mb()
start = time.perf_counter()
pq.read_table(sys.argv[1], columns=["key", "shard", "caption"])
"""

POISON = PEAK_RSS + """
from cleanclip_core.poison import write_poisoned_manifest
after_imports = peak_mb()
start = time.perf_counter()
write_poisoned_manifest(sys.argv[1], sys.argv[2], attack_name=sys.argv[3],
                        attack_config=json.loads(sys.argv[4]))
"""

REPORT = """
print(json.dumps({"seconds": time.perf_counter() - start, "imports_mb": after_imports, "peak_mb": peak_mb()}))
"""


def synthetic_manifest(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    parts = [pa.array(words).take(rng.integers(len(words), size=rows)) for words in WORDS.values()]
    captions = pc.binary_join_element_wise(*parts, " ")
    keys = pc.utf8_lpad(pa.array(np.arange(rows).astype(str)), 9, "0")
    return pa.table(
        {
            "key": keys,
            "shard": pc.utf8_lpad(pa.array((np.arange(rows) // 10_000).astype(str)), 5, "0"),
            "caption": captions,
            "url": pc.binary_join_element_wise("http://images.invalid/", keys, ".jpg", ""),
            "width": pa.array(np.full(rows, 224, np.int32)),
            "height": pa.array(np.full(rows, 224, np.int32)),
        }
    )


def measure(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code + REPORT, *args], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_row(name: str, poisons: str, result: dict, reference: dict) -> None:
    print(f"{name:<18}{poisons:>8}{result['seconds']:>10.2f}{result['peak_mb']:>10.0f}"
          f"{result['imports_mb']:>18.0f}{result['seconds'] / reference['seconds']:>9.1f}"
          f"{result['peak_mb'] / reference['peak_mb']:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_300_000)
    parser.add_argument("--poisons", type=int, default=1500)
    args = parser.parse_args()
    trigger = {"patch_size": 16, "pattern": "random", "location": "random"}
    attacks = {
        "badnet": {"type": "badnet", "target_label": "banana"},
        "label_consistent": {"type": "label_consistent", "target_label": "banana"},
    }
    with tempfile.TemporaryDirectory() as workdir:
        manifest = Path(workdir) / "manifest.parquet"
        start = time.perf_counter()
        pq.write_table(synthetic_manifest(args.rows), manifest)
        size_mb = manifest.stat().st_size / 2**20
        print(f"generated a {args.rows:,}-row manifest ({size_mb:.0f} MB) in "
              f"{time.perf_counter() - start:.1f} s")
        print(f"{'attack':<18}{'poisons':>8}{'build s':>10}{'peak MB':>10}{'after imports MB':>18}"
              f"{'x time':>9}{'x peak':>9}")
        reference = measure(READ, str(manifest))
        print_row("(read the columns)", "", reference, reference)
        for name, attack in attacks.items():
            config = attack | {"n_poisons": args.poisons, "seed": 0, "trigger": trigger}
            result = measure(POISON, str(manifest), str(Path(workdir) / f"{name}.parquet"), name, json.dumps(config))
            print_row(name, str(args.poisons), result, reference)


if __name__ == "__main__":
    main()
