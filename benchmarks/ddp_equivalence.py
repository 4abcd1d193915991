"""Does training in several processes compute one process's step here? For every objective of
`cleanclip_core.training.equivalence`, one step on a batch in one process against the same batch
split over --processes processes: the largest relative difference of a loss term and the
relative L2 distance of the gradients. Sums in another order differ by about 1e-7 in fp32 (CPU),
more in bf16 (CUDA); a different objective shows in tens of percent. It measures;
`pytest -m gpus tests/training/test_distributed.py` asserts.

    .venv/bin/python benchmarks/ddp_equivalence.py --model tiny-rn-w16 --device cuda
"""

import argparse

from cleanclip_core.training.equivalence import differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-vit")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="a multiple of 8")
    arguments = parser.parse_args()
    found = differences(arguments.model, arguments.device, arguments.processes, arguments.batch_size)
    print(f"{arguments.model} on {arguments.device}: 1 process at batch {arguments.batch_size} "
          f"vs {arguments.processes} at {arguments.batch_size // arguments.processes}")
    print(f"{'objective':<12} {'loss':>10} {'gradients':>10}")
    for objective, difference in found.items():
        print(f"{objective:<12} {difference.loss:>10.2e} {difference.gradients:>10.2e}")


if __name__ == "__main__":
    main()
