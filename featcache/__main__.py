"""``python -m featcache`` (and ``torchrun -m featcache``) runs the command line."""

from featcache.cli import main

main()
