"""Validation of charges against DFT: how well they reproduce the electrostatic potential outside the atoms.

:mod:`.esp` is the entry (``optddap esp``, :mod:`.cli`); :mod:`.potential` reads CP2K ``V_HARTREE_CUBE`` and
VASP ``LOCPOT`` files, :mod:`.sampling` chooses the points, :mod:`.kernel` computes the potential of charges
with the DFT's periodic boundary conditions, :mod:`.dipole` the dipoles, :mod:`.charges` reads charge sets;
:mod:`.cp2k` makes the CP2K reference data of the examples. This package imports nothing from AiiDA and, of
the package, only :mod:`aiida_optddap.engine` (tests/test_architecture.py).
"""
