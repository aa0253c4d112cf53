"""What every vla_ros node shares: parameter declaration, diagnostics, the main() idiom."""

import os
import re
import signal
import sys
import threading
import time
from typing import Callable, Dict, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import (ExternalShutdownException, MultiThreadedExecutor,
                             SingleThreadedExecutor)
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, qos_profile_sensor_data, QoSProfile,
                       ReliabilityPolicy)
from rclpy.qos_overriding_options import QoSOverridingOptions

from ..core.params import ConfigError, schema
from ..spin import spin_once

SENSOR_QOS = qos_profile_sensor_data
LATEST_IMAGE_QOS = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT,
                              history=HistoryPolicy.KEEP_LAST, depth=1)
COMMAND_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST, depth=1)
RELIABLE_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                          history=HistoryPolicy.KEEP_LAST, depth=10)
LATCHED_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST, depth=1,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


def declare(node: Node, name: str, default, description: str, *, read_only: bool = True,
            low=None, high=None, type_=None):
    """
    Declare one parameter with a descriptor and return its value.

    ``low``/``high`` become a floating-point or integer range in the descriptor (shown by
    ``ros2 param describe``); rclpy rejects out-of-range values set at start-up.
    """
    desc = ParameterDescriptor(description=description, read_only=read_only)
    if type_ is not None:
        desc.type = type_
    if low is not None and high is not None:
        if isinstance(default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                            to_value=float(high))]
        elif isinstance(default, int) and not isinstance(default, bool):
            desc.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
    try:
        if default is None:
            return node.declare_parameter(name, None, desc).value
        return node.declare_parameter(name, default, desc).value
    except Exception as exc:  # InvalidParameterValueException and type mismatches
        raise ConfigError(f'parameter {name!r}: {exc}') from exc


# Lets the parameters file override the QoS of a robot-facing endpoint
# (qos_overrides./camera/image_raw.subscription.reliability: reliable, depth, history,
# durability), as ros2 drivers and controllers allow.
QOS_OVERRIDABLE = QoSOverridingOptions.with_default_policies()

STRING_ARRAY = ParameterType.PARAMETER_STRING_ARRAY
DOUBLE_ARRAY = ParameterType.PARAMETER_DOUBLE_ARRAY


def declare_all(node: Node, node_name: str) -> Dict[str, object]:
    """
    Declare every parameter of ``node_name``'s schema (``core/params.py``); return them.

    ``node_name`` is the executable's node (the schema key), whatever the node was renamed to.
    """
    types = {'string': STRING_ARRAY, 'double': DOUBLE_ARRAY}
    return {p.name: declare(node, p.name, p.default, p.text, read_only=p.read_only,
                            low=p.low, high=p.high, type_=types.get(p.array))
            for p in schema(node_name)}


class Diagnostics:
    """
    Counters and values published on /diagnostics once per ``period`` seconds (steady clock).

    Nodes call ``count`` for events (drops, rejections) and ``set`` for values (rates,
    latencies, the current reason for not acting); level is WARN while a reason is set.
    """

    def __init__(self, node: Node, period: float = 1.0, callback_group=None):
        self._node = node
        self._lock = threading.Lock()
        self.counters: Dict[str, int] = {}
        self.values: Dict[str, str] = {}
        self.reason = ''
        self.error = ''
        self._pub = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        # Steady clock: a node whose ROS time stopped (/clock lost) must still say so.
        self._timer = node.create_timer(period, self.publish, callback_group=callback_group,
                                        clock=Clock(clock_type=ClockType.STEADY_TIME))

    def count(self, key: str, n: int = 1) -> int:
        """Add ``n`` to counter ``key``; returns the new total."""
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n
            return self.counters[key]

    def set(self, key: str, value):  # noqa: A003 - mirrors dict-like usage
        """Set a reported value."""
        if isinstance(value, float):
            value = f'{value:.6g}'
        with self._lock:
            self.values[key] = str(value)

    def status(self) -> DiagnosticStatus:
        """Build the node's current DiagnosticStatus."""
        with self._lock:
            items = {**{k: str(v) for k, v in self.counters.items()}, **self.values}
            reason, error = self.reason, self.error
        status = DiagnosticStatus()
        status.name = f'vla_ros: {self._node.get_fully_qualified_name()}'
        status.hardware_id = 'vla_ros'
        if error:
            status.level, status.message = DiagnosticStatus.ERROR, error
        elif reason:
            status.level, status.message = DiagnosticStatus.WARN, reason
        else:
            status.level, status.message = DiagnosticStatus.OK, 'ok'
        status.values = [KeyValue(key=k, value=v) for k, v in sorted(items.items())]
        return status

    def publish(self):
        """Publish the status now."""
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [self.status()]
        self._pub.publish(msg)


class RepeatLog:
    """
    Log a repeated condition when it starts, then at most once per ``period`` with a count.

    A condition that recurs on every message or tick (a resync while motion is disabled)
    must not write a line each time: the first occurrence is logged, later ones are counted
    and reported with the next line, ``period`` seconds (steady clock) later at the earliest.
    """

    def __init__(self, log: Callable[[str], None], period: float = 30.0):
        self._log = log
        self.period = float(period)
        self._last: Optional[float] = None
        self._unlogged = 0

    def __call__(self, text: str, now: Optional[float] = None) -> bool:
        """Count one occurrence; log it (with the count since the last line) when due."""
        now = time.monotonic() if now is None else now
        if self._last is not None and now - self._last < self.period:
            self._unlogged += 1
            return False
        if self._last is not None and self._unlogged:
            text += f' ({self._unlogged} more times in the last {now - self._last:.0f} s)'
        self._log(text)
        self._last, self._unlogged = now, 0
        return True


def now_s(node: Node) -> float:
    """Return the node's clock (sim time when use_sim_time) in seconds."""
    return node.get_clock().now().nanoseconds * 1e-9


def exclusive_group() -> MutuallyExclusiveCallbackGroup:
    """Return a new mutually exclusive callback group."""
    return MutuallyExclusiveCallbackGroup()


# Seconds the middleware may take to tear a node down after its executor stopped. Fast DDS
# participant deletion was seen to hang on this machine (once in many launch tests, under
# load: SIGINT, then SIGTERM ignored, then SIGKILL from ros2 launch); past this the
# process logs where it was stuck and exits with its code rather than hang.
SHUTDOWN_GRACE_S = 4.0


class _ShutdownWatchdog:
    """Bound the clean-up of ``run``: stack of the stuck thread to stderr, then exit."""

    def __init__(self, code: int, grace: float = SHUTDOWN_GRACE_S):
        import faulthandler
        self.done = threading.Event()
        self.code = code
        # Last resort, from a C thread that needs no GIL (exit code 1).
        faulthandler.dump_traceback_later(2.0 * grace, exit=True)
        threading.Thread(target=self._watch, args=(grace,), daemon=True).start()

    def _watch(self, grace: float):
        if self.done.wait(grace):
            return
        import traceback
        main = sys._current_frames().get(threading.main_thread().ident)
        stack = ''.join(traceback.format_stack(main)) if main is not None else '?'
        sys.stderr.write(f'[ERROR] node clean-up still running after {grace:g} s (the '
                         f'middleware did not return); exiting. Stuck at:\n{stack}')
        sys.stderr.flush()
        os._exit(self.code)

    def finish(self):
        import faulthandler
        self.done.set()
        faulthandler.cancel_dump_traceback_later()


def run(factory: Callable[[], Node], args: Optional[Sequence[str]] = None,
        threads: int = 1) -> int:
    """
    Init rclpy, build the node, spin an executor, shut down cleanly.

    Nodes use a SingleThreadedExecutor (``threads=1``): every vla_ros callback is short or,
    for inference, the only one that matters, and rclpy's MultiThreadedExecutor stalled the
    20 Hz timer for 160-620 ms at a time here (p99 period jitter 13-390 ms against 0.6-2.4
    ms single-threaded; README, "Timing"). Returns the process exit code: 0 on a normal
    stop, 2 on bad configuration found while the node is built (a parameter value).
    ``VLA_ROS_EXECUTOR_THREADS`` overrides ``threads`` (used by `vla-ros bench pipeline
    --executor-threads` to reproduce that comparison).
    """
    threads = int(os.environ.get('VLA_ROS_EXECUTOR_THREADS', threads))
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = factory()
        executor = (MultiThreadedExecutor(num_threads=threads) if threads > 1
                    else SingleThreadedExecutor())
        executor.add_node(node)
        # A managed node whose configure fails (a model that fails its hash check) stays
        # alive and unconfigured (nodes/managed.py); only start-up errors end the process.
        while spin_once(executor, 0.2):
            pass
    except ConfigError as exc:
        # The node object may not exist yet; CameraNode → camera_node names the logger.
        name = re.sub(r'(?<!^)(?=[A-Z])', '_', getattr(factory, '__name__', 'node')).lower()
        (node.get_logger().fatal if node else
         rclpy.logging.get_logger(name).fatal)(f'bad configuration: {exc}')
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Ctrl-C in a terminal signals every process of the group and `ros2 launch` then
        # forwards one more SIGINT: a second one must not break the clean-up (it used to end
        # the nodes with a KeyboardInterrupt traceback and exit code -2).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        watchdog = _ShutdownWatchdog(code)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        watchdog.finish()
    return code


def exit_with(code: int):
    """sys.exit only for non-zero codes (keeps `ros2 run` quiet on a clean stop)."""
    if code:
        sys.exit(code)
