"""Replay selection (``dynogen replay``): which earlier tasks to train on again beside a
collection's newest version. Not named ``replay``: a subpackage of that name would
shadow the function ``dynogen.replay`` once imported.

``select`` holds the pure choice (greedy k-center on cosine distance, random),
``embed`` the embedders (an OpenAI-compatible ``/v1/embeddings`` endpoint, or a
local lexical one that needs no model), ``mix`` the pool, the outputs and the
mixed training file.
"""
