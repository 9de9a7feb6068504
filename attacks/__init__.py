"""Transfer attacks (robust_ens.attacks)."""
