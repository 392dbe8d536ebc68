"""``python -m finesweep`` is the ``finesweep`` command."""

import sys

from finesweep.cli import main

sys.exit(main())
