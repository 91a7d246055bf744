"""``python -m segzoo.cli ...``: the same ``main`` as the ``segzoo`` console script."""

import sys

from segzoo.cli import main

if __name__ == "__main__":
    sys.exit(main())
