"""``python -m segzoo.hardware [--calibrate]``: show (or measure and cache) this machine's layout choice."""

import sys

from segzoo.hardware import main

sys.exit(main())
