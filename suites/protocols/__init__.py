"""The benchmark protocols as pytest tests: ``bench_protocols.py`` collects every registered suite."""
