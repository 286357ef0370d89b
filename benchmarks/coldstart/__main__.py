"""``python -m benchmarks.coldstart``: the cold-start benchmark's command line (see :mod:`benchmarks.coldstart.cli`)."""

import sys

from .cli import main

sys.exit(main())
