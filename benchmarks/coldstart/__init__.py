"""The cold-start benchmark: each detector of the examples with and without ArcAD on the same cold-start splits.

Modules:

* :mod:`~benchmarks.coldstart.arms`: the list of arms (what differs between two runs on one split);
* :mod:`~benchmarks.coldstart.records`: the typed run record (load, compact, settings check);
* :mod:`~benchmarks.coldstart.runner`: splits, runs, resuming (needs the data and the examples harness);
* :mod:`~benchmarks.coldstart.tables`: statistics and Markdown tables, from records alone;
* :mod:`~benchmarks.coldstart.decisions`: the decision table (detector x kind of defect -> configuration ->
  measured effect);
* :mod:`~benchmarks.coldstart.pages`: the generated blocks of the documentation pages;
* :mod:`~benchmarks.coldstart.cli`: the command line, ``python -m benchmarks.coldstart``.

``benchmarks/results/`` holds the runs behind docs/results.md.
"""

from .arms import ARM_NAMES, ARMS, DEFAULT_ARMS, Arm, get_arm
from .records import RunRecord, load_runs, run_file
from .tables import aggregate

__all__ = ["ARMS", "ARM_NAMES", "Arm", "DEFAULT_ARMS", "RunRecord", "aggregate", "get_arm", "load_runs", "run_file"]
