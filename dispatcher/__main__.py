"""``python -m dispatcher``: the same CLI as the ``dispatcher`` command."""

import sys

from dispatcher.cli import main

sys.exit(main())
