"""dynogen: grow instruction-tuning data from dataset metadata."""

__version__ = "0.1.0"
