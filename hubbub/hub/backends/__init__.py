"""Where messages are carried and kept: memory (one process) or redis (many)."""
