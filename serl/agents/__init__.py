"""Agents: SAC with RLPD options, DrQ augmentation and the grasp critic."""

from serl.agents.sac import SACAgent, SACConfig

__all__ = ["SACAgent", "SACConfig"]
