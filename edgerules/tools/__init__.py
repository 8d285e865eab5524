"""The `edgerules` console script and the offline commands (test, explain, replay, docgen)."""
