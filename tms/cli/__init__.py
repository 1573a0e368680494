"""The entry points' bodies: ``train.py`` (:mod:`.train`), ``evaluate.py`` (:mod:`.evaluate`), ``harvest.py`` (:mod:`.harvest`)."""
