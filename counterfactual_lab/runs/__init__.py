"""The run: where it lives and what identifies it, its manifest, its files, reading it back, reproducing it, and the checks before it starts."""
