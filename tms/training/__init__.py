"""The training loop every stage runs (:func:`tms.training.loop.fit`), its callbacks, resume, numerics, schedules."""
