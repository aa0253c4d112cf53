"""
The probe: one rclpy node beside the graph, spun on its own thread.

What every observer of a running graph needs, written once: a node in its own thread (the
caller's rclpy context when it has one, else its own), a lock for what the callbacks
record, the newest ``/diagnostics`` status of every node, the ``vla/enable`` client, service
calls with a deadline that survive a lost answer (``vla_ros/service_calls``), and polling
waits. ``testing/sim_probe.SimProbe`` (the demo and the closed-loop tests) and the graph
tests' harness build on it; the lock-step driver (``testing/lockstep``) does not, because it
must never spin on its own.
"""

import threading
import time
from typing import Callable, Dict

from diagnostic_msgs.msg import DiagnosticArray
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_srvs.srv import SetBool

from .. import service_calls


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Probe:
    """A node in its own thread with diagnostics, the enable client and service calls."""

    def __init__(self, name: str):
        """Create the node (initialising rclpy if the caller has not) and start spinning."""
        self._owns_context = not rclpy.ok()
        if self._owns_context:
            rclpy.init()
        self.node = Node(name)
        self.lock = threading.Lock()
        self.statuses: Dict[str, object] = {}       # node name → newest DiagnosticStatus
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      10)
        self.enable = self.node.create_client(SetBool, 'vla/enable')
        self._lifecycle: Dict[str, tuple] = {}   # node → (change_state, get_state) clients
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._running = True
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def start(self):
        """Start spinning (call after the subclass made its endpoints)."""
        self._thread.start()

    def _spin(self):
        while self._running and rclpy.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context shut down while spinning
                break

    def _on_diagnostics(self, msg):
        with self.lock:
            for status in msg.status:
                self.statuses[status.name.split('/')[-1]] = status

    def diagnostic_values(self, node: str) -> Dict[str, str]:
        """Return the newest /diagnostics key-values of ``node`` (empty when none yet)."""
        with self.lock:
            status = self.statuses.get(node)
        return {} if status is None else {kv.key: kv.value for kv in status.values}

    def call(self, client, request, timeout: float = 15.0,
             retry_after: float = service_calls.RETRY_AFTER):
        """
        Call a service from the caller's thread (the probe's thread spins); RuntimeError.

        ``service_calls.call``: the request is sent again when no answer came after
        ``retry_after`` s, so only for requests that may be repeated (parameters,
        get_state, vla/enable, sim/reset of a chosen episode); a lifecycle transition goes
        through ``change_state``.
        """
        return service_calls.call(client, request, timeout, retry_after=retry_after)

    def change_state(self, node: str, transition: int, timeout: float = 30.0):
        """Send ``node`` one lifecycle transition; return the answer (lost answers recovered)."""
        from lifecycle_msgs.srv import ChangeState, GetState
        clients = self._lifecycle.get(node)
        if clients is None:
            clients = self._lifecycle[node] = (
                self.node.create_client(ChangeState, f'{node}/change_state'),
                self.node.create_client(GetState, f'{node}/get_state'))
        return service_calls.change_state(clients[0], clients[1], transition, timeout)

    def set_enabled(self, enabled: bool, timeout: float = 15.0):
        """Open or close interpolation_node's motion gate; return the response."""
        return self.call(self.enable, SetBool.Request(data=bool(enabled)), timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll ``predicate`` until true or ``timeout`` seconds pass; return its last value."""
        return wait_for(predicate, timeout)

    def close(self):
        """Stop spinning, destroy the node; shut rclpy down if the probe started it."""
        self._running = False
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        if self._owns_context:
            rclpy.try_shutdown()
