"""ReContrast-style detector + ArcAD on a cold-start split, from the command line.

The model, its loss, anomaly map and the training step with its three ArcAD lines are
:mod:`arcad_harness.detectors.recontrast` (registered as ``"recontrast"``); this script is the harness's command line with the
detector fixed. Needs the package installed with the example extras (``pip install -e ".[examples]"``).

Usage::

    python examples/recontrast.py                    # generated synthetic data, +ArcAD
    python examples/recontrast.py --compare
    python examples/recontrast.py --data-root /data/mvtec --encoder wide_resnet50_2 --weights wrn50.pth
    python examples/recontrast.py --help
"""

from __future__ import annotations

import sys

from arcad_harness import main

if __name__ == "__main__":
    sys.exit(main(baseline="recontrast"))
