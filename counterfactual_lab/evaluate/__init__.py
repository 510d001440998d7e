"""Evaluate: run the model under audit on originals, reconstructions and kept counterfactuals."""
