"""The config layer: every check of the composed config and its inputs, run by :func:`tms.config.validate.validate`."""
