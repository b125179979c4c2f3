"""AiiDA data types of aiida-optddap."""

from .charges import ChargesData

__all__ = ("ChargesData",)
