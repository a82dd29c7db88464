"""Stand-in for tf2_ros (no PyPI wheel): import-only; crisp_py uses it only with use_tf_pose."""

from geometry_msgs.msg import TransformStamped  # noqa: F401  (tf2_ros re-exports it; crisp_py imports it from there)
