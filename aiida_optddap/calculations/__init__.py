"""Calculations of aiida-optddap: the ``optddap.fit`` CalcJob and the in-process ``optddap.fit_inline``."""
