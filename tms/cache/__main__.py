"""``python -m tms.cache``: see :mod:`tms.cache.cli`."""
import os
import sys

from tms.cache.cli import main

try:
    sys.exit(main())
except BrokenPipeError:  # ``python -m tms.cache ls | head``
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
