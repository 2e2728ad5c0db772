"""Developer tools: the recipes of the committed test fixtures (not part of the package)."""
