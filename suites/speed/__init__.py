"""Speed benchmarks of the attack, defense, training and corruption libraries (pytest-benchmark)."""
