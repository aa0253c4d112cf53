"""Implementations of the ``vla-ros`` verbs (export, bench, ...)."""
