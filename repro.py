"""The toy reproduction: ``python repro.py`` runs conf/repro/toy.yaml and writes docs/toy_reproduction*.

See :mod:`tms.repro.run` (``python repro.py --help``).
"""
from tms.repro.run import main

if __name__ == "__main__":
    main()
