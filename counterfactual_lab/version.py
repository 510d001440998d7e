"""The library's version: part of every run id, so a fixed metric is never served from an old run."""

__version__ = "0.1.0"
