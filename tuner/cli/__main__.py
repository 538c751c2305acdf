"""``python -m tuner.cli``: the same as the ``cnn-tuner`` command."""

import sys

from tuner.cli import main

sys.exit(main())
