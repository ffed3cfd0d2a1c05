"""``python -m trio_socketcluster``: the same as the ``trio-socketcluster`` command."""

import sys

from .cli import main

sys.exit(main())
