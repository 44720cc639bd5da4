"""The thin command line over ``dynogen.api``."""
