"""The numerical engine of aiida-optddap.

It imports nothing from AiiDA and imports torch lazily, so it runs standalone on a compute node:
``optddap fit CHGCAR`` or :func:`aiida_optddap.engine.fit.run_fit`.
"""
