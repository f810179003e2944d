"""Targets: the applications the directory is provisioned into."""
