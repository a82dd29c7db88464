"""Sample-efficient real-robot RL: learner, actor runtime, env, transport and devices.

Importing ``serl`` never imports ROS, libfranka, RealSense or MuJoCo; those load lazily
where they are used.
"""

__version__ = "0.1.0"
