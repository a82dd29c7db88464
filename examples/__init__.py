"""Real-arm task configurations in the HIL-SERL style, one folder per task (``examples/<task>/config.py``)."""
