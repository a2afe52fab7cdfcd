"""``python -m mars_jax``: the ``mars-jax`` command line."""

import sys

from mars_jax.runner.cli import main

sys.exit(main())
