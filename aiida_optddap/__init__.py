"""aiida-optddap: optimised density-derived atomic point charges (opt-DDAP) with AiiDA provenance."""

__version__ = "0.1.0"
