"""The toy reproduction of the paper's comparison (issue #19): the driver (:mod:`tms.repro.run`) and the
report it renders (:mod:`tms.repro.report`, :mod:`tms.repro.plots`). Not part of any cached stage."""
