"""``python -m jmattersim``: the ``jmattersim`` command."""

import sys

from ._src.cli import main

sys.exit(main())
