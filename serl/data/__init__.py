"""Replay buffers (frames stored once, 50/50 mixed sampling), demo loading, episode files."""
