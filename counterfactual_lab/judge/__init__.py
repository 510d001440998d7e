"""The judge: prove that each generated candidate is the image asked for, and keep the best."""
