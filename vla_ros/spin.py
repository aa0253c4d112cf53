"""One executor step that treats a context shut down under it as the end, not a failure."""

import time

import rclpy

# How long an executor error may precede the context's shutdown and still count as the stop (s).
SHUTDOWN_GRACE = 1.0


def spin_once(executor, timeout_sec: float, context=None) -> bool:
    """
    Run one ``executor.spin_once``; return False once the rclpy context has shut down.

    ``context``: the executor's context (default: rclpy's default context).

    Ctrl-C (rclpy's signal handler) shuts the context down while the executor may be in the
    middle of a wait or a take, which then raises a RuntimeError ("the given context is not
    valid", "Unable to convert call argument"): a stop. rclpy shuts the context down on its
    own signal thread, which tears the middleware down before the context reads as shut down,
    so the error can come a moment before ``rclpy.ok()`` turns False: it is waited for (up
    to ``SHUTDOWN_GRACE`` s). The same error with the context still up after that is a real
    one and is raised.
    """
    try:
        executor.spin_once(timeout_sec=timeout_sec)
    except RuntimeError:
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while rclpy.ok(context=context) and time.monotonic() < deadline:
            time.sleep(0.01)
        if rclpy.ok(context=context):
            raise
        return False
    return rclpy.ok(context=context)
