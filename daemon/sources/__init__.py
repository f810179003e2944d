"""Directory sources: where the truth comes from."""
