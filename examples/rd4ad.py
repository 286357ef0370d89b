"""RD4AD-style detector + ArcAD on a cold-start split, from the command line.

The model, its loss, anomaly map and the training step with its three ArcAD lines are
:mod:`arcad_harness.detectors.rd4ad` (registered as ``"rd4ad"``); this script is the harness's command line with the
detector fixed. Needs the package installed with the example extras (``pip install -e ".[examples]"``).

Usage::

    python examples/rd4ad.py                         # generated synthetic data, +ArcAD, figures in runs/rd4ad
    python examples/rd4ad.py --compare               # baseline and +ArcAD side by side
    python examples/rd4ad.py --data-root /data/mvtec --categories bottle --split split.json \\
        --encoder wide_resnet50_2 --weights wide_resnet50_2-95faca4d.pth --steps 10000
    python examples/rd4ad.py --help
"""

from __future__ import annotations

import sys

from arcad_harness import main

if __name__ == "__main__":
    sys.exit(main(baseline="rd4ad"))
