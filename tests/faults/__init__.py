"""Faults between the merge and the services it talks to (issue 26)."""
