"""Data policies: which licences, languages and splits a run may turn into training data.

Pure rules in ``licenses``, ``languages`` and ``splits`` (vocabularies the config
validates against, so they import nothing above the leaves); ``gate`` applies them
to a source before any request is sent (and opens rows, the one I/O step). Import
from the modules: this package imports nothing, so reading a vocabulary does not
load the gate.
"""
