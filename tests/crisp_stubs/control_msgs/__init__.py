"""Stand-in for control_msgs (no PyPI wheel): import-only, for crisp_py in the tests."""
