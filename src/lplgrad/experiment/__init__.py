"""Experiments with known labels: trials x strategies (``runner``) through the round loop (``loop``),
with the run folder's checkpoints, results rows, progress lines and saved artifacts."""
