"""MoMoK on MKG-Y with a PyG R-GCN as the structure modality's encoder.

The structure modality's learned entity table passes through two ``RGCNConv`` layers over the
training graph (``momok_pyg.nn.encoders.RGCNEncoder``: inverse edges added, residual
connection) before ReMoKE's experts; everything else is the Table 1 MoMoK of
``momok-pyg reproduce table1`` (names-text features, dim 200, lr 1e-3, batch 1024, valid every
5 epochs, early stop after 6 evaluations without improvement).

    python examples/mkg_y_rgcn.py --raw-from ../shared/mmkg/MKG-Y
    python examples/mkg_y_rgcn.py --raw-from ../shared/mmkg/MKG-Y --encoder-arg num_bases=8
    python examples/mkg_y_rgcn.py --raw-from ../shared/mmkg/MKG-Y --model tucker  # R-GCN + TuckER

Every ``momok-pyg train`` flag is accepted and overrides these defaults; the run directory
(default runs/mkg-y-rgcn) resumes from its last.pt when rerun.

The recorded results of this composition (RESULTS.md, "Composing with PyG") come from
``momok-pyg reproduce encoders --raw-root ../shared/mmkg``, which trains it with exactly the
Table 1 settings of the run it is compared with (TuckER: its grid point selected on valid).
"""
import sys

from momok_pyg.cli import main

DEFAULTS = ["train", "--dataset", "MKG-Y", "--features", "names", "--structure-encoder", "rgcn",
            "--dim", "200", "--lr", "1e-3", "--epochs", "300", "--eval-every", "5",
            "--patience", "6", "--out", "runs/mkg-y-rgcn"]

if __name__ == "__main__":
    # later flags win in argparse: the user's arguments override the defaults
    sys.exit(main(DEFAULTS + sys.argv[1:]))
