"""Work chains of aiida-optddap."""
