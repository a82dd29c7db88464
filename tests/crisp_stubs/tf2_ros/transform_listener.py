class TransformListener:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("tf2_ros is a test stand-in: run crisp_py with use_tf_pose=False")
