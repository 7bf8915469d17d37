"""Train MoMoK on DB15K with the paper's hyper-parameters, select on valid, report test.

Preset (``momok_pyg.training.PRESETS["DB15K"]``): dim 256, lr 5e-4, 2000 epochs (upstream
train.py defaults).
K = 3 experts per modality, lambda = 1e-4 (ExID), batch 1024, Adam, 1-N training with
reciprocal relations; valid every 10 epochs, early stop after 10 evaluations without a
better valid MRR; test metrics of the best-valid checkpoint.

    python examples/db15k.py                              # features from entity names (offline)
    python examples/db15k.py --features official          # the paper's image/text features
    python examples/db15k.py --raw-from /path/to/DB15K --epochs 200 --threads 2
    python examples/db15k.py --no-exid --out runs/db15k-no-exid    # an ablation

Every ``momok-pyg train`` flag is accepted and overrides the preset; the run directory
(default runs/db15k) resumes from its last.pt when rerun.
"""
import sys

from momok_pyg.cli import main

DEFAULTS = ["train", "--dataset", "DB15K", "--features", "names", "--out", "runs/db15k"]

if __name__ == "__main__":
    # later flags win in argparse: the user's arguments override the defaults
    sys.exit(main(DEFAULTS + sys.argv[1:]))
