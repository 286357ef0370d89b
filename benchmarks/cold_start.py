"""The cold-start benchmark's former entry point: ``python benchmarks/cold_start.py ...`` runs
``python -m benchmarks.coldstart ...`` (the package ``benchmarks/coldstart``), with the same arguments.

The package is run as a module in a child interpreter whose import path starts at this checkout's root (the one
setting ``python -m`` takes from the working directory when it is started there), so that the command works from any
folder; ``python -m benchmarks.coldstart`` from the repository root is the documented form.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    sys.exit(subprocess.run([sys.executable, "-m", "benchmarks.coldstart", *sys.argv[1:]], env=env).returncode)
