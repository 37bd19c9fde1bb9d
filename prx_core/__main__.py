"""``python -m prx_core ...`` (what ``torchrun`` runs) is the ``prx`` command."""
from prx_core.cli import entry

entry()
