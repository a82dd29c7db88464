"""Stand-in for controller_manager_msgs (no PyPI wheel): import-only, for crisp_py in the tests."""
