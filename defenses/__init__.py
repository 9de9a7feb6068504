"""Ensemble defenses (robust_ens.defenses)."""
