"""``python -m seg_edge`` = the ``seg-edge`` command."""

from seg_edge.cli.app import main

main()
