"""vla_ros.spin.spin_once: an executor error during the context's shutdown is the stop."""

import threading
import time

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from vla_ros import spin


def _executor_whose_timer_raises(context, on_raise=None):
    """Build a real node and executor on ``context`` whose timer callback raises RuntimeError."""
    node = rclpy.create_node('spin_probe', context=context)

    def tick():
        if on_raise is not None:
            on_raise()
        raise RuntimeError('Unable to convert call argument')

    node.create_timer(0.01, tick)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    return node, executor


def test_an_error_just_before_the_shutdown_ends_the_spin():
    """
    Shutdown on rclpy's signal thread: the executor can fail first.

    The error is raised 0.1 s before another thread shuts the context down, as the
    middleware's teardown does under Ctrl-C; ``spin_once`` waits for it and returns False.
    """
    context = Context()
    rclpy.init(context=context)

    def shut_down_soon():
        threading.Timer(0.1, lambda: rclpy.try_shutdown(context=context)).start()

    node, executor = _executor_whose_timer_raises(context, shut_down_soon)
    try:
        started = time.monotonic()
        assert spin.spin_once(executor, 1.0, context) is False
        assert time.monotonic() - started < spin.SHUTDOWN_GRACE
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_an_error_with_the_context_up_is_raised():
    """The same error while the context stays up is a real fault: raised after the grace."""
    context = Context()
    rclpy.init(context=context)
    node, executor = _executor_whose_timer_raises(context)
    try:
        with pytest.raises(RuntimeError, match='convert call argument'):
            spin.spin_once(executor, 1.0, context)
        assert rclpy.ok(context=context)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
