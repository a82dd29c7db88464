"""The training console: a browser page to watch, steer and correct a session (served by the actor side)."""
