"""Validation of charges against DFT: the electrostatic potential outside the atoms, and the CP2K studies.

:mod:`.esp` is the entry of ``optddap esp`` (:mod:`.cli`); :mod:`.potential` reads CP2K ``V_HARTREE_CUBE`` and
VASP ``LOCPOT`` files, :mod:`.sampling` chooses the points (with the engine's
:mod:`~aiida_optddap.engine.electrostatics.sampling`; the engine's :mod:`~aiida_optddap.engine.electrostatics.kernel`
computes the potential of charges with the DFT's periodic boundary conditions and its
:mod:`~aiida_optddap.engine.electrostatics.dipole` the dipoles), :mod:`.charges` reads charge sets;
:mod:`.migration` compares the old and new default. The studies behind examples/ (their scripts only call
these): :mod:`.frames` is the one loader of their JSON records and cubes, :mod:`.cp2k` writes, runs and parses
CP2K; :mod:`.vacancy_cells`, :mod:`.vacancies` and :mod:`.vacancy_report` the vacancy validation;
:mod:`.rattled`, :mod:`.convergence`, :mod:`.smoothness` and :mod:`.baseline_check` the rattled rock salts;
:mod:`.pairs` the NaCl pairs; :mod:`.esp_set` the ESP set. This package imports nothing from AiiDA and, of the
package, only :mod:`aiida_optddap.engine` (tests/test_architecture.py).
"""
