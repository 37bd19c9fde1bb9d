"""``python -m prx_core ...`` (what ``torchrun`` runs) is the ``prx`` command."""
import sys

from prx_core.cli import main

sys.exit(main())
