"""``lplgrad serve`` and ``push``: Label Studio as the labeling front end (docs/label-studio.md).

protocol.py (Label Studio's bodies, pure), ranking.py (the priority score), predictions.py (tasks ->
predictions), webhook.py (events -> labels and rounds), learner.py (when rounds train), app.py (the
Starlette routes), auth.py, record.py, label_studio_api.py (the calls back), push.py."""
