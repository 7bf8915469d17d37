"""Train MoMoK on the synthetic MMKG (offline, about a minute on a 2-core CPU), then show
a top-10 prediction with its explanation.

    python examples/synthetic.py
    python examples/synthetic.py --model tucker --out runs/synthetic-tucker   # the baseline
    python examples/synthetic.py --no-joint --out runs/synthetic-no-joint     # an ablation

Every ``momok-pyg train`` flag is accepted and overrides the preset
(``momok_pyg.training.PRESETS["synthetic"]``).
"""
import sys

from momok_pyg.cli import build_parser, main

DEFAULTS = ["train", "--dataset", "synthetic", "--out", "runs/synthetic"]

if __name__ == "__main__":
    argv = DEFAULTS + sys.argv[1:]
    status = main(argv)
    if status == 0:
        out = build_parser().parse_args(argv).out
        status = main(["predict", "--run", out, "--head", "synthetic:e0", "--relation",
                       "synthetic:r0", "-k", "10"])
    sys.exit(status)
