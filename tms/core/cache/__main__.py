"""``python -m tms.core.cache``: see :mod:`tms.core.cache.cli`."""
import os
import sys

from tms.core.cache.cli import main

try:
    sys.exit(main())
except BrokenPipeError:  # ``python -m tms.core.cache ls | head``
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
