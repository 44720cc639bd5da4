"""The instance stage: kept tasks applied to dataset rows (rendering, the build journal) and
export of what was built.
"""
