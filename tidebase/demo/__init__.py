"""Demo helpers: an offline scripted model for running Agents SDK pipelines without network."""
