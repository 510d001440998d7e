"""Storage: fsspec stores (local and ``s3://``), locks, file hashes, the one reader for files the project did not write, images, and the redaction of secrets."""
