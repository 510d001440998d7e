"""Prefect tasks: decorators (retries, cache policy, tags) over calls into ``counterfactual_lab``.

Each module wraps one stage of the audit; the logic lives in the library, never here.
"""
