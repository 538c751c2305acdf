"""``python -m tuner.cli``: the same as the ``cnn-tuner`` command."""

import sys

from tuner.cli.commands import main

sys.exit(main())
