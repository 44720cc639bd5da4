"""The test suite, one folder per stage of dynogen (tests/io mirrors dynogen/io, ...).

Each folder is a package so that module names are ``tests.<room>.test_x``: two rooms
may hold the same basename, and a room named like a standard module (``io``,
``collections``) never shadows it. Shared helpers live in ``tests.helpers``; test
files never import each other.
"""
