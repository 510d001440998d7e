"""Multimodal Counterfactual Lab: audit vision-language models for social bias.

The library is plain Python: it never imports Prefect. Orchestration lives in the
top-level ``tasks`` and ``flows`` packages.
"""

__version__ = "0.1.0"
