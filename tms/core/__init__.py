"""Core (the bottom layer): IO, errors, the stage cache and code identity, distributed processes, seeds, tracking."""
