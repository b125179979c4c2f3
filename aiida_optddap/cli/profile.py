"""What every ``aiida-optddap`` sub-command shares: loading the AiiDA profile (imported lazily, so that
``--help`` stays fast)."""

from __future__ import annotations


def load_profile(profile: str | None):
    """Load ``profile`` (None: the default one), switching from a profile already loaded."""
    from aiida import load_profile as _load

    return _load(profile, allow_switch=True)
