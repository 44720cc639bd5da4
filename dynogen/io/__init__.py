"""Metadata sources: where units (one dataset configuration each) come from.

Every source is an iterable of ``Unit | Skipped`` with a ``describe()`` line;
``sources.open_source(spec)`` picks one from a ``--source`` string. Import from the
modules (``cards``, ``folder``, ``hub``, ``shards``, ``sources``, ``rows``...): this
package imports nothing, so reading rows does not load the Hub client.
"""
