"""``python -m lplgrad`` is the same as the ``lplgrad`` command."""

import sys

from lplgrad.cli.main import main

sys.exit(main())
