"""The benchmark protocols as pytest modules: one module per registered suite."""
