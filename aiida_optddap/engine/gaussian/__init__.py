"""The Gaussian fit: the DDAP problem on the G-sphere (gspace, ddap, shells, batch, large, nufft), its
solvers and restraints (restraint, conditioning), the parameter search (losses, optimize), and what is
derived from a fit (reconstruct, spin)."""
