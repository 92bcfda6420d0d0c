"""``python -m dsim``: see :mod:`dsim.cli`."""

import sys

from dsim.cli import main

sys.exit(main())
