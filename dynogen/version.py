"""The package version, a leaf: the store records it in manifests without importing the
package root (whose lazy exports reach the whole application)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
