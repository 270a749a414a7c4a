"""The ``seg-edge`` command line: one module per command, one error table in ``app``."""
