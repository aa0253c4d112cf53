"""Bring-up of the node processes: start, managed transitions, readiness, kill and restart."""

import time
from typing import Callable, Dict, Optional, Sequence

from .records import CLOCK_PREFIX, NodeDied, NotQuiet, NS
from ... import service_calls
from ...graph import MANAGED, MANAGER, with_manager


class BringUp:
    """The processes' life cycle, as a part of ``Lockstep`` (its state lives there)."""

    def start(self, inputs: Sequence[tuple] = (), manage: bool = True):
        """
        Start the nodes and wait until they answer and every input topic is matched.

        ``inputs``: (topic, message class, QoS) the driver will publish; their publishers
        are created now so that discovery has matched them before the first message.
        ``manage`` False starts no lifecycle_manager: the managed nodes stay unconfigured
        (without outputs) until the caller drives their transitions (``change_state``).
        """
        for topic, cls, qos in inputs:
            self.publisher(topic, cls, qos)
        for name in self.names:
            self.group.start(self.spec(name))
        for name in self.names:
            self._wait_ready(name)
        self.unmanaged = () if manage else tuple(n for n in MANAGED if n in self.names)
        if manage:
            self._bring_up(start_manager=True)
        self.wait_matched()

    # -- managed nodes ----------------------------------------------------------------------
    def _bring_up(self, start_manager: bool = False,
                  keep_clock: Optional[Callable[[], None]] = None):
        """Have lifecycle_manager configure and activate the managed nodes; wait for it."""
        from lifecycle_msgs.msg import State
        from lifecycle_msgs.srv import GetState
        from std_srvs.srv import Trigger
        managed = [n for n in MANAGED if n in self.names]
        if not managed:
            return
        if start_manager:
            specs = with_manager([self.spec(n) for n in self.names])
            self.group.start(specs[-1])
        else:
            # Fire and forget: its answer comes when the bring-up is done, and the states
            # asked below are what counts (a lost answer changes nothing).
            startup = self._client(Trigger, f'/{MANAGER[1]}/startup')
            self._service_call(lambda **kw: service_calls.wait_for_service(
                startup, time.monotonic() + self.timeout, **kw), 'startup', keep_clock)
            startup.call_async(Trigger.Request())
        end = time.monotonic() + self.timeout
        for name in managed:
            client = self._client(GetState, f'/{name}/get_state')
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise NotQuiet(f'{name} not active within {self.timeout:g} s\n'
                                   + self.logs())
                state = self._service_call(lambda **kw: service_calls.get_state(
                    client, left, **kw), f'{name}/get_state', keep_clock)
                if state == State.PRIMARY_STATE_ACTIVE:
                    break
                if keep_clock is not None:
                    keep_clock()
                else:
                    self.executor.spin_once(timeout_sec=0.05)

    def _client(self, service_type, name: str):
        """Return the driver's client of service ``name`` (created on first use)."""
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(service_type, name)
        return client

    def _check_alive(self):
        for name in list(self.alive):
            self._check_process(name)

    def _service_call(self, call: Callable, what: str,
                      keep_clock: Optional[Callable[[], None]] = None):
        """
        Run a ``service_calls`` function with this driver's spinning and liveness check.

        ``keep_clock`` (called while waiting) moves sim time on; without it sim time stands
        still and the driver's executor spins. No answer in time raises NotQuiet.
        """
        spin = ((lambda _: keep_clock()) if keep_clock is not None
                else (lambda seconds: self.executor.spin_once(timeout_sec=seconds)))
        try:
            return call(spin=spin, check=self._check_alive)
        except service_calls.ServiceCallError as exc:
            raise NotQuiet(f'{what}: {exc} at sim time {self.now_ns / NS:.3f} s\n'
                           + self.logs()) from exc

    def _wait_ready(self, name: str):
        from rcl_interfaces.srv import GetParameters
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(
                GetParameters, f'/{name}/get_parameters')
        end = time.monotonic() + self.timeout
        while not client.service_is_ready():
            self._check_process(name)
            if time.monotonic() > end:
                raise NotQuiet(f'{name} did not come up within {self.timeout:g} s\n'
                               + self.logs(name))
            self.executor.spin_once(timeout_sec=0.05)
        if name not in self.alive:
            self.alive.append(name)
        # The first answer comes from the spinning executor: the constructor (and with it
        # every timer, created at ROS time 0 before any /clock) is done.
        self.barrier([name])

    def wait_matched(self, settle_s: float = 0.5):
        """
        Wait until each publisher of the driver reaches every subscriber the graph shows.

        /clock must reach every running node. Node-to-node matching cannot be seen from
        here; ``settle_s`` of wall time after the driver's own endpoints matched gives
        discovery time to finish between the nodes too (start-up only).
        """
        end = time.monotonic() + self.timeout

        def matched():
            for n in self.alive:
                count = self.node.count_subscribers(CLOCK_PREFIX + n)
                if count == 0 or self._clock_pubs[n].get_subscription_count() < count:
                    return False
            for topic, pub in self._publishers.items():
                n = self.node.count_subscribers(topic)
                if n == 0 and getattr(self, 'unmanaged', ()):
                    continue  # its reader may be a managed node not configured yet
                if n == 0 or pub.get_subscription_count() < n:
                    return False
            for topic in ('vla/image', 'vla/action_tokens', 'vla/target',
                          'arm_controller/commands', 'cmd_vel'):
                if self.node.count_publishers(topic) == 0 and self._expects_publisher(topic):
                    return False
            return True
        while not matched():
            for name in self.alive:
                self._check_process(name)
            if time.monotonic() > end:
                raise NotQuiet('topics not matched within '
                               f'{self.timeout:g} s: ' + self._matching_report())
            self.executor.spin_once(timeout_sec=0.05)
        stop = time.monotonic() + settle_s
        while time.monotonic() < stop:
            self.executor.spin_once(timeout_sec=0.05)

    def _expects_publisher(self, topic: str) -> bool:
        owner = {'vla/image': 'camera_node', 'vla/action_tokens': 'inference_node',
                 'vla/target': 'detokenizer_node', 'arm_controller/commands':
                 'interpolation_node', 'cmd_vel': 'interpolation_node'}[topic]
        return owner in self.alive and owner not in getattr(self, 'unmanaged', ())

    def _matching_report(self) -> str:
        parts = [f'clock of {n} {self._clock_pubs[n].get_subscription_count()}/1'
                 for n in self.alive]
        for topic, pub in self._publishers.items():
            parts.append(f'{topic} {pub.get_subscription_count()}/'
                         f'{self.node.count_subscribers(topic)}')
        return ', '.join(parts)

    # -- processes --------------------------------------------------------------------------
    def _check_process(self, name: str):
        proc = self.group.procs.get(name)
        if proc is not None and proc.poll() is not None:
            raise NodeDied(f'{name} exited with code {proc.returncode} at sim time '
                           f'{self.now_ns / NS:.3f} s\n' + self.logs(name))

    def logs(self, name: str = '', lines: int = 25) -> str:
        """Return the tail of one node's log (all nodes when ``name`` is empty)."""
        names = [name] if name else list(self.group.lines)
        return '\n'.join(f'--- {n} ---\n' + '\n'.join(self.group.lines.get(n, [])[-lines:])
                         for n in names)

    def kill(self, name: str):
        """Send SIGKILL to one node (kill -9) and stop waiting for it."""
        import signal
        self.group.kill(name, signal.SIGKILL)
        self.group.procs[name].wait(10.0)
        self.alive.remove(name)

    def restart(self, name: str, keep_clock: Optional[Callable[[], None]] = None):
        """
        Start a killed node again and wait until it answers and is matched.

        ``keep_clock`` is called while waiting (e.g. to keep stepping sim time, as a robot's
        clock would keep running); without it, sim time stands still meanwhile. The graph
        may still list the dead process's endpoints (DDS notices a killed participant only
        when its lease expires), so readiness is an answer, which only the new process can
        give: get_parameters is asked again every half second until one comes.
        """
        from rcl_interfaces.srv import GetParameters
        self.group.start(self.spec(name))
        client = self._clients[name]
        self._service_call(lambda spin, check: service_calls.call(
            client, GetParameters.Request(), self.timeout, retry_after=0.5, spin=spin,
            check=lambda: self._check_process(name)), f'{name} did not come back', keep_clock)
        self.alive.append(name)
        if name in MANAGED:
            self._bring_up(keep_clock=keep_clock)
        self.wait_matched(settle_s=1.0)

    def change_state(self, name: str, transition: int, label: str = ''):
        """
        Send ``name`` a lifecycle change_state request; return its pending answer.

        The answer (``service_calls.ChangeStateCall``: ``done()``, ``result()``) survives
        a lost response: the node's state is asked before, and again when no answer came.
        """
        from lifecycle_msgs.srv import ChangeState, GetState
        change = self._client(ChangeState, f'/{name}/change_state')
        get = self._client(GetState, f'/{name}/get_state')
        return self._service_call(lambda **kw: service_calls.start_change_state(
            change, get, transition, label, self.timeout, **kw), f'{name}/change_state')

    def answer(self, future, what: str = 'answer'):
        """Spin (sim time standing still) until ``future`` is done; return its result."""
        self._spin_until(future.done, what, self.alive)
        return future.result()

    def lifecycle_state(self, name: str) -> str:
        """Return the label of ``name``'s lifecycle state (asked over get_state)."""
        from lifecycle_msgs.srv import GetState
        return self.call(GetState, f'/{name}/get_state', GetState.Request()).current_state.label

    def close(self) -> Dict[str, Optional[int]]:
        """Stop the nodes (SIGINT) and destroy the driver node; return the exit codes."""
        try:
            codes = self.group.stop()
        finally:
            self.executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        return codes

    # -- events -----------------------------------------------------------------------------
