"""Durable state: run directories, their journals, and the request cache."""
