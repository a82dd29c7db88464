"""Robot side: impedance control, MuJoCo twin, backends, cameras and the HTTP robot server."""
