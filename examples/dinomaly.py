"""Dinomaly-style detector + ArcAD on a cold-start split, from the command line.

The model, its loss, anomaly map and the training step with its three ArcAD lines are
:mod:`arcad_harness.detectors.dinomaly` (registered as ``"dinomaly"``); this script is the harness's command line with the
detector fixed. Needs the package installed with the example extras (``pip install -e ".[examples]"``).

Usage::

    python examples/dinomaly.py                      # generated synthetic data, CNN tokens, +ArcAD
    python examples/dinomaly.py --compare --setting multi
    python examples/dinomaly.py --data-root /data/mvtec --setting multi --encoder dinov2_vitb14_reg \\
        --weights dinov2_vitb14_reg4_pretrain.pth --steps 10000 --device cuda
    python examples/dinomaly.py --help
"""

from __future__ import annotations

import sys

from arcad_harness import main

if __name__ == "__main__":
    sys.exit(main(baseline="dinomaly"))
