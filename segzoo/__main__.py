"""``python -m segzoo ...``: the same ``main`` as the ``segzoo`` console script (and ``python -m segzoo.cli``)."""

import sys

from segzoo.cli import main

if __name__ == "__main__":
    sys.exit(main())
