"""Ingest: read a dataset's record batches, validate rows with Great Expectations (quarantine with reasons), fingerprint the data, and watch for new data."""
