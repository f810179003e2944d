"""Application plugins shipped with provisiond."""
