"""Reading results: report.md with the paper's tables (``write``), figures (``plots``), the terminal
table (``summary``) and the area under the budget curve and paired intervals (``metrics``)."""
