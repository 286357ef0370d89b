"""The cold-start benchmark's former entry point: ``python benchmarks/cold_start.py ...`` runs
``python -m benchmarks.coldstart ...`` (the package ``benchmarks/coldstart``), with the same arguments."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for ``benchmarks``
    from benchmarks.coldstart.cli import main

    sys.exit(main())
