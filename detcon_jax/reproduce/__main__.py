"""``python -m detcon_jax.reproduce ...``."""

import sys

from detcon_jax.reproduce.cli import main

sys.exit(main())
