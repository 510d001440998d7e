"""The one-command demo: its sample dataset, its tiny random-weight models and its audit config."""
