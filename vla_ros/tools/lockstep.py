"""
Lock-step driving of the real node processes on a sim clock that only this driver moves.

Golden replay (``vla-ros golden``) and the fault tests need runs that come out the same
every time, with real processes and real DDS. Wall-clock sleeps cannot give that; this
driver does it with events:

* the nodes run with ``use_sim_time`` and the driver is their only clock, so a node's
  timers fire exactly when the driver moves time past them (the 20 Hz control and 5 Hz
  inference timers tick on a grid of multiples of their periods, because they are created
  at ROS time 0, before the first clock message);
* each node gets its own clock topic (``/clock`` remapped to ``/vla_lockstep/clock/<node>``),
  so that at a time where several timers are due the driver can let them fire in a fixed
  order: first every node but inference_node (the 20 Hz control tick at *t* runs), then
  inference_node (its tokens at *t* reach interpolation_node after that tick, as they would
  on a robot, where inference takes time). With one shared clock the order would depend on
  which process the OS schedules first: a node that handles the new time and a newly
  arrived target in one executor pass applies the target before its timer runs;
* after every step the driver waits until the graph is quiet: a *barrier round* calls every
  node's ``get_parameters`` service (each rclpy node has one) and waits for all answers.
  A single-threaded executor serves, in one pass, ready timers, then subscriptions, then
  services; rmw_fastrtps publishes synchronously (its default), into each subscriber's
  receive port, and a node's incoming data is handled in arrival order. So an answer means
  the node has handled everything the driver sent before the request, and its own outputs
  from that work have been delivered to every subscriber. Rounds repeat until two rounds in
  a row bring no new message on a topic one node sends another (the driver subscribes to
  all of them): after the round in which such a message showed up, the next round proves
  its sender finished publishing it to every subscriber, the one after that that they all
  handled it. A frame that travels camera → inference → detokenizer → interpolation is
  therefore handled completely before time moves again. After a clock step at least two
  rounds pass: the first makes sure every node took the new time, the second that the
  timers it made due have run;
* a message is published right after the clock moved to its time (the clock sample reaches
  every node first, and a node's clock subscription is served before its others), and at
  most one message per topic is in flight per round (a subscription hands over one message
  per executor pass), so every node sees it arrive at that ROS time.

What comes out is attributed to the sim time at which it was produced: tokens (with the
source stamp they carry), targets, and controller commands (one set per control tick).

Length (over 300 lines): one protocol (clock stepping, barriers, settling, kill/restart,
managed bring-up) over one driver node; its parts share the driver state.
"""

import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from vla_ros_interfaces.msg import ActionTarget, ActionTokens

from .up import ProcessGroup
from .. import service_calls
from ..conversions import msg_to_tokens, time_to_ns
from ..graph import (DEFAULT_REMAPPINGS, MANAGED, MANAGER, node_params, NodeSpec, PIPELINE,
                     with_manager)

PIPELINE_NODES = tuple(name for _, name in PIPELINE)
NS = 1_000_000_000
CLOCK_PREFIX = '/vla_lockstep/clock/'


class NodeDied(RuntimeError):
    """A node process exited while the driver needed it."""


class NotQuiet(RuntimeError):
    """The graph kept producing messages, or a node did not answer a barrier in time."""


def period_grid(ns: int, period_ns: int) -> int:
    """Return the first multiple of ``period_ns`` strictly after ``ns``."""
    return (ns // period_ns + 1) * period_ns


class Records:
    """What the driver received, attributed to the sim time (ns) it arrived at."""

    def __init__(self):
        """Start empty."""
        self.images: List[dict] = []
        self.tokens: List[dict] = []
        self.targets: List[dict] = []
        self.arm: List[dict] = []
        self.base: List[dict] = []
        self.gripper: List[dict] = []

    def clear(self):
        """Forget everything received so far."""
        self.__init__()


class Lockstep:
    """
    The pipeline's node processes on use_sim_time, and the rclpy node that drives them.

    The caller initialises rclpy. ``overrides`` adds parameters per node name (on top of
    ``params_file``); ``nodes`` names the pipeline nodes to run (default: all four);
    ``late_periods`` the timer period (ns) of each node that ticks last at a shared time
    (default: inference_node at 5 Hz).
    """

    def __init__(self, params_file: str, overrides: Optional[Dict[str, Dict]] = None,
                 nodes: Sequence[str] = PIPELINE_NODES, period_ns: int = 50_000_000,
                 timeout: float = 60.0, env: Optional[Dict[str, str]] = None,
                 name: str = 'vla_lockstep', late_periods: Optional[Dict[str, int]] = None):
        """Create the driver node and the process group (nothing starts yet)."""
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        self.params_file = params_file
        self.overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        self.names = list(nodes)
        self.period_ns = int(period_ns)
        self.timeout = float(timeout)
        # Timer periods (ns) of the nodes whose timers fire last at a shared tick.
        self.late_periods = dict(late_periods or {'inference_node': 200_000_000})
        # The barrier argument needs publishing to finish inside publish() (rmw_fastrtps's
        # default; pinned in case the environment says otherwise).
        env = {'RMW_FASTRTPS_PUBLICATION_MODE': 'SYNCHRONOUS', **(env or {})}
        self.group = ProcessGroup(params_file, use_sim_time=True, quiet=True, env=env)
        self.node = Node(name)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.records = Records()
        self.received = 0          # pipeline messages received (drives settle)
        self.now_ns = 0            # the sim time last published on /clock
        self.alive: List[str] = []
        self.rounds = 0
        self.diagnostics: Dict[str, Dict[str, str]] = {}
        self.diagnostic_messages: Dict[str, str] = {}
        self.diagnostics_at: Dict[str, float] = {}   # when each node's last report came
        self.on_command: Optional[Callable[[str, np.ndarray], None]] = None
        self._publishers: Dict[str, object] = {}
        self._pending: set = set()
        # What a second message on a topic (or a clock step) waits for: 'settle' (the graph
        # is quiet: exact replay) or 'barrier' (one round: every node has taken the
        # message; faster, for fault injection, where the driver's own messages on
        # node-to-node topics would otherwise count as traffic to wait out).
        self.flush = 'settle'
        self._clients: Dict[str, object] = {}
        self._lock = threading.Lock()
        self._make_endpoints()

    # -- set-up ---------------------------------------------------------------------------
    def _make_endpoints(self):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import Twist, TwistStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float64MultiArray

        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        best_effort = QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
        clock_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self._clock_pubs = {name: self.node.create_publisher(Clock, CLOCK_PREFIX + name,
                                                             clock_qos)
                            for name in self.names}
        self._clock_cls = Clock
        r = self.records
        sub = self.node.create_subscription

        def on(store, convert, command: str = ''):
            def callback(msg):
                entry = {'t_ns': self.now_ns}
                entry.update(convert(msg))
                store.append(entry)
                if not command:  # commands go to controllers, never to another node
                    self.received += 1
                if command and self.on_command is not None:
                    self.on_command(command, entry['values'])
            return callback

        def tokens(msg):
            values, stamp = msg_to_tokens(msg, len(msg.tokens))
            return {'stamp_ns': stamp, 'tokens': [int(v) for v in values]}

        def target(msg):
            b = msg.base
            return {'stamp_ns': time_to_ns(msg.header.stamp), 'names': list(msg.joint_names),
                    'arm': [float(v) for v in msg.positions],
                    'base': [float(b.linear.x), float(b.linear.y), float(b.angular.z)],
                    'gripper': float(msg.gripper)}

        def twist(msg):
            t = msg.twist if isinstance(msg, TwistStamped) else msg
            return {'values': np.array([t.linear.x, t.linear.y, t.angular.z], dtype=float)}

        sub(Image, 'vla/image', on(r.images, lambda m: {
            'stamp_ns': time_to_ns(m.header.stamp)}), best_effort)
        sub(ActionTokens, 'vla/action_tokens', on(r.tokens, tokens), reliable)
        sub(ActionTarget, 'vla/target', on(r.targets, target), reliable)
        sub(Float64MultiArray, 'arm_controller/commands', on(r.arm, lambda m: {
            'values': np.array(m.data, dtype=float)}, 'arm'), reliable)
        stamped = {**node_params(self.params_file, 'interpolation_node'),
                   **self.overrides.get('interpolation_node', {})}.get('cmd_vel_stamped', True)
        sub(TwistStamped if stamped else Twist, 'cmd_vel', on(r.base, twist, 'base'), reliable)
        sub(Float64MultiArray, 'gripper_controller/commands', on(r.gripper, lambda m: {
            'values': np.array(m.data, dtype=float)}, 'gripper'), reliable)
        sub(DiagnosticArray, '/diagnostics', self._on_diagnostics, 50)

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.hardware_id == 'vla_ros':
                name = status.name.split('/')[-1]
                self.diagnostics[name] = {kv.key: kv.value for kv in status.values}
                self.diagnostic_messages[name] = status.message
                self.diagnostics_at[name] = time.monotonic()

    def spec(self, name: str) -> NodeSpec:
        """Return the NodeSpec of one pipeline node with this driver's overrides."""
        executable = {n: e for e, n in PIPELINE}.get(name, name)
        return NodeSpec(executable, name, parameters=dict(self.overrides.get(name, {})),
                        remappings=DEFAULT_REMAPPINGS + (('/clock', CLOCK_PREFIX + name),))

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
    def _spin_until(self, done: Callable[[], bool], what: str, names: Sequence[str]):
        end = time.monotonic() + self.timeout
        while not done():
            for name in names:
                self._check_process(name)
            if time.monotonic() > end:
                raise NotQuiet(f'{what}: no answer within {self.timeout:g} s at sim time '
                               f'{self.now_ns / NS:.3f} s\n' + self.logs())
            self.executor.spin_once(timeout_sec=0.05)

    def call(self, service_type, name: str, request):
        """
        Call a service of the graph (sim time stands still meanwhile); return the answer.

        For requests that may be repeated (``service_calls.call``: sent again when the
        answer is lost).
        """
        client = self._client(service_type, name)
        return self._service_call(lambda **kw: service_calls.call(
            client, request, self.timeout, **kw), f'service {name}')

    def barrier(self, names: Optional[Sequence[str]] = None):
        """
        One barrier round: every node (default: all running) answers get_parameters.

        A request that has no answer after a second is sent again: right after discovery a
        server may not yet know the client's response reader, and rmw_fastrtps then drops
        the response ("failed to send response (timeout)"). Asking again changes nothing
        else (the request has no effect) and an answer to any copy will do.
        """
        from rcl_interfaces.srv import GetParameters
        names = list(self.alive if names is None else names)
        futures = {n: [self._clients[n].call_async(GetParameters.Request())] for n in names}
        asked = time.monotonic()

        def done() -> bool:
            nonlocal asked
            if all(any(f.done() for f in fs) for fs in futures.values()):
                return True
            if time.monotonic() - asked > 1.0:
                asked = time.monotonic()
                for n, fs in futures.items():
                    if not any(f.done() for f in fs):
                        fs.append(self._clients[n].call_async(GetParameters.Request()))
            return False
        try:
            self._spin_until(done, 'barrier', names)
        finally:
            for n, fs in futures.items():
                for f in fs:
                    if not f.done():
                        self._clients[n].remove_pending_request(f)
        self.rounds += 1

    def settle(self, min_rounds: int = 1, max_rounds: int = 60) -> int:
        """
        Run barrier rounds until the graph is quiet (see the module docstring).

        Quiet: two rounds in a row without a new node-to-node message, or, when none came
        at all, one round; at least ``min_rounds`` (2 after a clock step). Returns the
        number of rounds.
        """
        rounds = quiet = 0
        seen = False
        while True:
            before = self.received
            self.barrier()
            rounds += 1
            if self.received != before:
                seen, quiet = True, 0
            else:
                quiet += 1
            if rounds >= min_rounds and quiet >= (2 if seen else 1):
                self._pending.clear()
                return rounds
            if rounds >= max_rounds:
                raise NotQuiet(f'the graph did not settle within {max_rounds} rounds at sim '
                               f'time {self.now_ns / NS:.3f} s')

    def set_clock(self, ns: int, names: Optional[Sequence[str]] = None):
        """
        Move sim time to ``ns`` for ``names`` (default: every node).

        What was published at the old time is settled first.
        """
        ns = int(ns)
        if ns < self.now_ns:
            raise ValueError(f'sim time must not go back: {ns} < {self.now_ns}')
        if ns == self.now_ns and names is None:
            return
        self._flush()
        from builtin_interfaces.msg import Time
        sec, nsec = divmod(ns, NS)
        self.now_ns = ns
        msg = self._clock_cls(clock=Time(sec=sec, nanosec=nsec))
        targets = self.names if names is None else names
        for name in targets:
            self._clock_pubs[name].publish(msg)
        # The barrier that follows asks each node over a service, another DDS writer: no
        # order with /clock. Waiting until every node's reader has acknowledged the new time
        # puts it in the node's queue before the barrier's request, so a timer due at this
        # time runs within the barrier rounds (under load the time once arrived after them
        # and tokens were attributed to the next step).
        # A killed node's reader stays matched until its lease expires and never acks:
        # the wait is bounded (0.5 s), which a live reader on this machine never needs.
        from rclpy.duration import Duration
        for name in targets:
            if name in self.alive:
                self._clock_pubs[name].wait_for_all_acked(Duration(seconds=0.5))

    def tick(self):
        """
        Advance to the next control tick and let everything it causes happen.

        Nodes of ``late_periods`` whose timer is due at this tick take the new time after
        every other node has taken it and run its timers (see the module docstring).
        """
        t = period_grid(self.now_ns, self.period_ns)
        last = [n for n in self.names if n in self.late_periods and
                t % self.late_periods[n] == 0]
        first = [n for n in self.names if n not in last]
        for group in (first, last):
            if group:
                self.set_clock(t, group)
                self.settle(2)

    def advance_to(self, ns: int):
        """Run every control tick up to ``ns``, then set the clock to ``ns``."""
        while period_grid(self.now_ns, self.period_ns) <= ns:
            self.tick()
        self.set_clock(ns)

    def publisher(self, topic: str, cls, qos):
        """Return the driver's publisher on ``topic`` (created on first use)."""
        pub = self._publishers.get(topic)
        if pub is None:
            pub = self._publishers[topic] = self.node.create_publisher(cls, topic, qos)
        return pub

    def publish(self, topic: str, message, cls=None, qos=None):
        """
        Publish a message (or its serialized bytes) on ``topic`` at the current sim time.

        A second message on the same topic first settles the one before it.
        """
        if topic in self._pending:
            self._flush()
        pub = self.publisher(topic, cls or type(message), qos)
        pub.publish(message)
        self._pending.add(topic)

    def _flush(self):
        if not self._pending:
            return
        if self.flush == 'barrier':
            self.barrier()
            self._pending.clear()
        else:
            self.settle(1)

    def publish_many(self, messages: Sequence[tuple]):
        """Publish (topic, message-or-bytes, cls, qos) tuples, one per topic per round."""
        for topic, message, cls, qos in messages:
            self.publish(topic, message, cls, qos)
