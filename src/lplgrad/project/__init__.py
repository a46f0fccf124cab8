"""Labeling your own images: a project folder with its SQLite state (db.py), the image files
(images.py), the exchange formats (exchange.py), the commands (workflow.py, query.py, predict.py)."""
