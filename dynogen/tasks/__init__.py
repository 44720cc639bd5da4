"""Tasks: an answer's text turned into kept tasks. Parsing, the rules, the filter that runs them
in order, and the judge.
"""
