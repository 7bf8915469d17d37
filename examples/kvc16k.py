"""Train MoMoK on KVC16K with the paper's hyper-parameters, select on valid, report test.

Preset (``momok_pyg.training.PRESETS["KVC16K"]``): dim 256, lr 5e-4, 2000 epochs (upstream
train.py defaults).
K = 3 experts per modality, lambda = 1e-4 (ExID), batch 1024, Adam, 1-N training with
reciprocal relations; valid every 10 epochs, early stop after 10 evaluations without a
better valid MRR; test metrics of the best-valid checkpoint.

    python examples/kvc16k.py                              # features from entity names (offline)
    python examples/kvc16k.py --features official          # the paper's image/text features
    python examples/kvc16k.py --raw-from /path/to/Kuai16K --epochs 200 --threads 2
    python examples/kvc16k.py --no-exid --out runs/kvc16k-no-exid    # an ablation

Every ``momok-pyg train`` flag is accepted and overrides the preset; the run directory
(default runs/kvc16k) resumes from its last.pt when rerun.

The raw folder of KVC16K is called Kuai16K upstream (names in Chinese; the offline name
encoder all-MiniLM-L6-v2 is English-only, so prefer --features official)."""
import sys

from momok_pyg.cli import main

DEFAULTS = ["train", "--dataset", "KVC16K", "--features", "names", "--out", "runs/kvc16k"]

if __name__ == "__main__":
    # later flags win in argparse: the user's arguments override the defaults
    sys.exit(main(DEFAULTS + sys.argv[1:]))
