"""Training and inference as plain functions: ``fit`` (w_main with w_aux), the ranking loss, and
evaluation / prediction over a dataset's images."""
