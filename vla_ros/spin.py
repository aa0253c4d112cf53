"""One executor step that treats a context shut down under it as the end, not a failure."""

import rclpy


def spin_once(executor, timeout_sec: float) -> bool:
    """
    Run one ``executor.spin_once``; return False once the rclpy context has shut down.

    Ctrl-C (rclpy's signal handler) shuts the context down while the executor may be in the
    middle of a wait or a take, which then raises a RuntimeError ("the given context is not
    valid", "Unable to convert call argument"): a stop. The same error with the context still
    up is a real one and is raised.
    """
    try:
        executor.spin_once(timeout_sec=timeout_sec)
    except RuntimeError:
        if rclpy.ok():
            raise
        return False
    return rclpy.ok()
