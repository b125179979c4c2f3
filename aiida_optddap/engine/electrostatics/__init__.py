"""Electrostatics of fitted charges: Ewald sums and Coulomb matrices (coulomb), charge equilibration (qeq)
and the dataset's electrostatic baseline (baseline)."""
