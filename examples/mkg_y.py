"""Train MoMoK on MKG-Y with the paper's hyper-parameters, select on valid, report test.

Preset (``momok_pyg.training.PRESETS["MKG-Y"]``): dim 300, lr 5e-4, 2000 epochs (upstream README).
K = 3 experts per modality, lambda = 1e-4 (ExID), batch 1024, Adam, 1-N training with
reciprocal relations; valid every 10 epochs, early stop after 10 evaluations without a
better valid MRR; test metrics of the best-valid checkpoint.

    python examples/mkg_y.py                              # features from entity names (offline)
    python examples/mkg_y.py --features official          # the paper's image/text features
    python examples/mkg_y.py --raw-from /path/to/MKG-Y --epochs 200 --threads 2
    python examples/mkg_y.py --no-exid --out runs/mkg-y-no-exid    # an ablation

Every ``momok-pyg train`` flag is accepted and overrides the preset; the run directory
(default runs/mkg-y) resumes from its last.pt when rerun.
"""
import sys

from momok_pyg.cli import main

DEFAULTS = ["train", "--dataset", "MKG-Y", "--features", "names", "--out", "runs/mkg-y"]

if __name__ == "__main__":
    # later flags win in argparse: the user's arguments override the defaults
    sys.exit(main(DEFAULTS + sys.argv[1:]))
