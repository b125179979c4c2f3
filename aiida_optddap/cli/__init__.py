"""Command line of the AiiDA layer: ``verdi data optddap`` and the ``aiida-optddap`` console script."""
