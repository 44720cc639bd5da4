"""Collections on top of runs: a grow step adds a version of what is new or changed in a source."""
