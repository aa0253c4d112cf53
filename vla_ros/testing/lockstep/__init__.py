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

The parts: ``records`` (constants, errors, what the driver keeps), ``bringup`` (processes,
managed transitions, readiness, kill and restart), ``clock`` (clock steps, barrier rounds,
publishing); ``Lockstep`` here joins them over one driver node and its state.
"""

import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from vla_ros_interfaces.msg import ActionTarget, ActionTokens

from .bringup import BringUp
from .clock import Clock
from .records import (CLOCK_PREFIX, NodeDied, NotQuiet, NS, period_grid,  # noqa: F401
                      PIPELINE_NODES, Records)
from ...conversions import msg_to_tokens, time_to_ns
from ...graph import DEFAULT_REMAPPINGS, node_params, NodeSpec, PIPELINE
from ...processes import ProcessGroup


class Lockstep(BringUp, Clock):
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
