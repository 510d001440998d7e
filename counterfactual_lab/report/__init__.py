"""The report people read: ``report.html`` (templates, matplotlib charts, example images), the findings
in words, terminal text, and run-to-run comparison (``cflab compare``: :func:`compare.compare_runs`, the history)."""
