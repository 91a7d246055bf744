"""``python -m segzoo.hardware [--calibrate]``: an entry point; the command is :mod:`segzoo.cli.hardware`."""

import sys

from segzoo.cli.hardware import main

sys.exit(main())
