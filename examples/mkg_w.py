"""Train MoMoK on MKG-W with the paper's hyper-parameters, select on valid, report test.

Preset (``momok_pyg.training.PRESETS["MKG-W"]``): dim 200, lr 1e-3, 2000 epochs (upstream README).
K = 3 experts per modality, lambda = 1e-4 (ExID), batch 1024, Adam, 1-N training with
reciprocal relations; valid every 10 epochs, early stop after 10 evaluations without a
better valid MRR; test metrics of the best-valid checkpoint.

    python examples/mkg_w.py                              # structure only (see below)
    python examples/mkg_w.py --features official          # the paper's image/text features
    python examples/mkg_w.py --raw-from /path/to/MKG-W --epochs 200 --threads 2
    python examples/mkg_w.py --no-exid --out runs/mkg-w-no-exid    # an ablation

Every ``momok-pyg train`` flag is accepted and overrides the preset; the run directory
(default runs/mkg-w) resumes from its last.pt when rerun.

MKG-W's entity names are bare Wikidata ids (Q-ids, no label text), so name-derived text
would be empty: the default here is --features none (structure only) unless the official
features are given (--features official)."""
import sys

from momok_pyg.cli import main

DEFAULTS = ["train", "--dataset", "MKG-W", "--features", "none", "--out", "runs/mkg-w"]

if __name__ == "__main__":
    # later flags win in argparse: the user's arguments override the defaults
    sys.exit(main(DEFAULTS + sys.argv[1:]))
