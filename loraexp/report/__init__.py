"""Sweep reports: figures, rank advice and its confirmation, ``report.md``/``report.html``
(``loraexp report SWEEP_DIR``; docs/results.md, "Report")."""
