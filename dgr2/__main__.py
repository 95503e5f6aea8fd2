"""``python -m dgr2 ...`` is the ``dgr2`` command (what ``torchrun -m dgr2`` needs)."""

import sys

from dgr2.cli import main

sys.exit(main())
