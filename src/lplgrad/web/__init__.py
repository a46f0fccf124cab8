"""``lplgrad label``: the local web page to label a project's batches (app.py, trainer.py, templates/, static/)."""
