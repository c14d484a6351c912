"""``python -m detcon_jax.bench step|loss|pipeline|fh ...``."""

import sys

from detcon_jax.bench.cli import main

sys.exit(main())
