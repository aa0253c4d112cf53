"""
lifecycle_manager: brings the managed nodes up (configure, then activate) and down.

Start order does not order DDS discovery, so the graph does not rely on it: the managed
nodes (inference_node, interpolation_node) start unconfigured and holding, and this node
drives their transitions through the standard ``<node>/change_state`` services once each
is reachable: every node is configured first (inference_node loads and verifies its model
there, minutes for a TensorRT engine build), then all are activated in order. After that,
a managed node seen unconfigured again (restarted by respawn or a supervisor) is brought
up again.

With ``autostart`` (default) bring-up begins at start-up; otherwise call
``lifecycle_manager/startup`` (std_srvs/Trigger). ``lifecycle_manager/shutdown``
deactivates them in reverse order (the interpolator holds, the policy stops). A failed
transition is logged with the node and transition and reported on /diagnostics, with the
reason the node itself reports there (a managed node whose configure fails stays alive
and unconfigured and publishes the error on /diagnostics). ``configure`` is tried
``configure_attempts`` times, ``retry_delay`` apart (a model still being copied, a GPU not
yet up); then the manager gives up visibly: an ERROR log line and an ERROR /diagnostics
status naming the node and the reason, until ``startup`` is called again.
``vla/enable`` and the latched e-stop remain the operator's motion gate.
"""

from dataclasses import dataclass
import threading
import time
from typing import Dict, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_srvs.srv import Trigger

from .common import ConfigError, declare_all, Diagnostics, exit_with, run
from .. import service_calls


@dataclass(frozen=True)
class ManagerParams:
    """Validated parameters of lifecycle_manager."""

    node_names: Tuple[str, ...]
    autostart: bool
    service_timeout: float
    transition_timeout: float
    configure_attempts: int
    retry_delay: float

    def __post_init__(self):
        if not self.node_names or len(set(self.node_names)) != len(self.node_names):
            raise ConfigError(f'node_names must list distinct nodes, found '
                              f'{list(self.node_names)}')


class LifecycleManager(Node):
    """Configures, then activates, the managed nodes; deactivates them on request."""

    def __init__(self):
        super().__init__('lifecycle_manager')
        values = declare_all(self, 'lifecycle_manager')
        values['node_names'] = tuple(values['node_names'])
        p = self.params = ManagerParams(**values)
        self.diag = Diagnostics(self)
        self._busy = threading.Lock()
        self._lifecycle_clients = {
            name: (self.create_client(ChangeState, f'{name}/change_state'),
                   self.create_client(GetState, f'{name}/get_state'))
            for name in p.node_names}
        # The error each managed node reports on /diagnostics (why a transition failed).
        self._errors: Dict[str, Tuple[float, str]] = {}
        self._error_seen = threading.Condition()
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 50)
        self.create_service(Trigger, '~/startup', self._on_startup)
        self.create_service(Trigger, '~/shutdown', self._on_shutdown)
        self.diag.reason = 'waiting to bring the nodes up'
        # After a successful bring-up, a managed node found unconfigured again (it was
        # restarted: respawn, a crash and a supervisor) is brought up again.
        self._watching = False
        self.create_timer(1.0, self._watch, clock=Clock(clock_type=ClockType.STEADY_TIME))
        if p.autostart:
            threading.Thread(target=self.startup, daemon=True).start()

    def _on_diagnostics(self, msg: DiagnosticArray):
        for status in msg.status:
            name = status.name.rsplit('/', 1)[-1]
            if (status.hardware_id == 'vla_ros' and status.level == DiagnosticStatus.ERROR
                    and name in self.params.node_names):
                with self._error_seen:
                    self._errors[name] = (time.monotonic(), status.message)
                    self._error_seen.notify_all()

    def _node_error(self, name: str, since: float, wait: float = 2.0) -> str:
        """Return the error ``name`` reported on /diagnostics after ``since`` ('' if none)."""
        end = time.monotonic() + wait
        with self._error_seen:
            while True:
                at, text = self._errors.get(name, (0.0, ''))
                if at >= since:
                    return text
                left = end - time.monotonic()
                if left <= 0:
                    return ''
                self._error_seen.wait(left)

    def _watch(self):
        if self._watching and not self._busy.locked():
            threading.Thread(target=self._rebring, daemon=True).start()

    def _rebring(self):
        for name in self.params.node_names:
            if not self._lifecycle_clients[name][1].service_is_ready():
                continue
            # One quick question: a killed node's service may still be listed (until its
            # DDS lease ends) and never answer; the next watch asks again.
            if self._state(name, patience=0.0) == State.PRIMARY_STATE_UNCONFIGURED:
                self.get_logger().warn(f'{name} is unconfigured again (restarted?): '
                                       'bringing the nodes up again')
                self.diag.count('restarts_seen')
                self.startup()
                return

    # -- transitions (run on a worker thread: the executor answers the service futures) ---
    def _state(self, name: str, patience: Optional[float] = None) -> int:
        """
        Return the node's primary state (UNKNOWN when it never answers).

        The request is sent again while unanswered (``service_calls.call``), for
        ``patience`` seconds (default ``service_timeout``; one second at least): right
        after discovery rmw_fastrtps may drop a response, and a node busy in a long
        transition answers once it is done.
        """
        client = self._lifecycle_clients[name][1]
        patience = self.params.service_timeout if patience is None else patience
        try:
            return service_calls.get_state(client, max(1.0, patience))
        except service_calls.ServiceCallError:
            return State.PRIMARY_STATE_UNKNOWN

    def _transition(self, name: str, transition: int, label: str) -> bool:
        change, get = self._lifecycle_clients[name]
        if not change.wait_for_service(timeout_sec=self.params.service_timeout):
            return self._fail(f'{name}: no {name}/change_state service after '
                              f'{self.params.service_timeout:g} s')
        start = time.monotonic()
        try:
            # Sent once; a lost answer is recovered from get_state (service_calls).
            result = service_calls.change_state(change, get, transition,
                                                self.params.transition_timeout)
        except service_calls.ServiceCallError:
            result = None
        if result is None or not result.success:
            why = 'no answer (the node exited or timed out)' if result is None else 'failed'
            reason = self._node_error(name, start) if result is not None else ''
            return self._fail(f'{name}: {label} {why}'
                              + (f'; {name} reports: {reason}' if reason else ''))
        self.get_logger().info(f'{name}: {label} done in {time.monotonic() - start:.2f} s')
        return True

    def _fail(self, text: str) -> bool:
        self.get_logger().error(f'bring-up: {text}')
        self.diag.count('failed_transitions')
        self.diag.reason = text
        return False

    def _configure(self, name: str) -> bool:
        """Configure ``name``, ``configure_attempts`` times at most; give up visibly."""
        attempts = self.params.configure_attempts
        for attempt in range(1, attempts + 1):
            if self._transition(name, Transition.TRANSITION_CONFIGURE, 'configure'):
                return True
            if self._state(name) != State.PRIMARY_STATE_UNCONFIGURED:
                break  # gone, or moved on by someone else: nothing to retry
            if attempt < attempts:
                self.get_logger().warn(f'{name}: configure attempt {attempt}/{attempts} '
                                       f'failed; trying again in {self.params.retry_delay:g} s')
                time.sleep(self.params.retry_delay)
        text = (f'gave up bringing the nodes up: {name} could not be configured '
                f'({attempts} attempt{"s" if attempts > 1 else ""}; last: '
                f'{self.diag.reason}); call lifecycle_manager/startup to try again')
        self.get_logger().error(text)
        self.diag.count('gave_up')
        self.diag.error = text
        return False

    def startup(self) -> bool:
        """Configure every node that is unconfigured, then activate every inactive one."""
        with self._busy:
            names = self.params.node_names
            self.diag.error = ''
            for name in names:
                if not self._lifecycle_clients[name][0].wait_for_service(
                        timeout_sec=self.params.service_timeout):
                    return self._fail(f'{name}: no {name}/change_state service after '
                                      f'{self.params.service_timeout:g} s')
                state = self._state(name)
                if state == State.PRIMARY_STATE_UNCONFIGURED:
                    if not self._configure(name):
                        return False
                elif state not in (State.PRIMARY_STATE_INACTIVE, State.PRIMARY_STATE_ACTIVE):
                    return self._fail(f'{name}: cannot configure it from state {state} '
                                      '(no answer is 0)')
            for name in names:
                # Never report a node active that is not: each one is asked again.
                state = self._state(name)
                if state == State.PRIMARY_STATE_INACTIVE:
                    if not self._transition(name, Transition.TRANSITION_ACTIVATE, 'activate'):
                        return False
                elif state != State.PRIMARY_STATE_ACTIVE:
                    return self._fail(f'{name}: cannot activate it from state {state} '
                                      '(no answer is 0)')
            self.diag.reason = ''
            self._watching = True
            self.diag.set('active', ','.join(names))
            self.get_logger().info(f'active: {", ".join(names)}')
            return True

    def shutdown(self) -> bool:
        """Deactivate every active node, in reverse order."""
        with self._busy:
            ok = True
            for name in reversed(self.params.node_names):
                if self._state(name) == State.PRIMARY_STATE_ACTIVE:
                    ok = self._transition(name, Transition.TRANSITION_DEACTIVATE,
                                          'deactivate') and ok
            self.diag.set('active', '')
            self._watching = False
            self.diag.reason = 'deactivated' if ok else self.diag.reason
            return ok

    def _on_startup(self, request, response):
        threading.Thread(target=self.startup, daemon=True).start()
        response.success, response.message = True, 'bring-up started'
        return response

    def _on_shutdown(self, request, response):
        threading.Thread(target=self.shutdown, daemon=True).start()
        response.success, response.message = True, 'deactivating'
        return response


def main(args=None):
    """Run lifecycle_manager."""
    exit_with(run(LifecycleManager, args))


if __name__ == '__main__':
    main()
