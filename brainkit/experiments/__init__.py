"""Experiments: profiles, the cached results store, the paper's designs, sweeps."""

from .profiles import PROFILES, Profile, get_profile
from .store import ResultsStore, Run, RunOutput, config_key, default_store, load_results

__all__ = [
    "PROFILES",
    "Profile",
    "ResultsStore",
    "Run",
    "RunOutput",
    "config_key",
    "default_store",
    "get_profile",
    "load_results",
]
