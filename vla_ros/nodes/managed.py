"""
ManagedNode: an rclpy LifecycleNode that no lifecycle request can kill or leave moving.

rclpy's ``<node>/change_state`` service passes the requested transition straight to rcl; a
transition the current state does not have (``configure`` on an active node, ``activate``
before ``configure``, anything on a finalized node) raises ``RCLError: Transition is not
registered`` out of the service callback, the executor re-raises it, and the node dies with
its last command still applied. This class puts its own handler in front of rclpy's:

* a request the current state cannot take is **refused**: ``success`` false, a warning
  naming the transition and the ones that are available, the counter
  ``refused_transitions``; the node keeps running and keeps doing what it did;
* a node may **hold** a request until it is safe to carry it out (``hold_transition``):
  interpolation_node holds ``cleanup`` and ``shutdown`` until the base is at rest and the
  arm stands still, so their answer means the robot is at rest. The executor keeps spinning
  meanwhile (the control ticks run, the e-stop is served); the answer is sent when the node
  calls ``release_held_transition``. Another request while one is held is refused.

rclpy services answer when their callback returns; holding a request means sending that
answer later, which rclpy has no API for. The change_state service object is therefore
given its own ``send_response`` that keeps the request header of a held transition and
sends the answer when it is released (the executor's call passes through otherwise).
"""

from typing import Optional, Tuple

from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode

# Transitions that take a node out of active/inactive for good or back to unconfigured.
STOPPING = (Transition.TRANSITION_CLEANUP, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
            Transition.TRANSITION_INACTIVE_SHUTDOWN, Transition.TRANSITION_ACTIVE_SHUTDOWN)
FINALIZED = State.PRIMARY_STATE_FINALIZED
# Transition id → name, for messages ('transition 7' says little).
TRANSITION_NAMES = {getattr(Transition, k): k[len('TRANSITION_'):].lower()
                    for k in dir(Transition) if k.startswith('TRANSITION_')
                    and isinstance(getattr(Transition, k), int)}


class _Held:
    """A change_state request whose answer waits (``ManagedNode.hold_transition``)."""

    def __init__(self, request: ChangeState.Request, transition: int, label: str):
        self.request = request
        self.transition = transition
        self.label = label
        self.header = None   # set when the executor hands over the answer


class ManagedNode(LifecycleNode):
    """LifecycleNode with a change_state service that refuses or holds instead of dying."""

    def __init__(self, node_name: str, **kwargs):
        super().__init__(node_name, **kwargs)
        self._held: Optional[_Held] = None
        service = getattr(self, '_service_change_state', None)
        if service is None:  # enable_communication_interface=False: nothing to guard
            return
        self._rclpy_change_state = service.callback
        self._send_change_state_response = service.send_response
        service.callback = self._on_change_state
        service.send_response = self._respond

    # -- hooks for subclasses ---------------------------------------------------------------
    def hold_transition(self, transition: int, label: str) -> bool:
        """Return True to hold ``transition`` until ``release_held_transition`` (default no)."""
        return False

    def refused(self, text: str):
        """Report a refused request (subclasses count it in their diagnostics)."""
        self.get_logger().warn(text)

    # -- state ------------------------------------------------------------------------------
    @property
    def lifecycle_state(self) -> Tuple[int, str]:
        """Return (id, label) of the current lifecycle state."""
        state_id, label = self._state_machine.current_state
        return int(state_id), str(label)

    @property
    def holding_transition(self) -> Optional[str]:
        """Return the label of the held transition, None when none is held."""
        return None if self._held is None else self._held.label

    def _available(self):
        """Return {transition id: label} the current state can take."""
        return {int(t[0]): str(t[1]) for t in self._state_machine.available_transitions}

    # -- the service ------------------------------------------------------------------------
    def _on_change_state(self, request: ChangeState.Request, response: ChangeState.Response):
        available = self._available()
        state = self.lifecycle_state[1]
        label = request.transition.label
        if label:
            ids = [i for i, name in available.items() if name == label]
            transition = ids[0] if ids else None
        else:
            transition = request.transition.id if request.transition.id in available else None
        if transition is None:
            asked = label or TRANSITION_NAMES.get(request.transition.id,
                                                  f'transition {request.transition.id}')
            self.refused(f'refusing lifecycle request {asked!r}: not a transition of state '
                         f'{state!r} (available: '
                         f'{", ".join(sorted(set(available.values()))) or "none"})')
            response.success = False
            return response
        if self._held is not None:
            self.refused(f'refusing lifecycle request {available[transition]!r}: '
                         f'{self._held.label!r} is still in progress')
            response.success = False
            return response
        if self.hold_transition(transition, available[transition]):
            self._held = _Held(request, transition, available[transition])
            return self._held
        return self._change_state(request, response)

    def _change_state(self, request, response):
        try:
            return self._rclpy_change_state(request, response)
        except _rclpy.RCLError as exc:
            # Checked above; a state machine that still disagrees must not kill the node.
            self.refused(f'lifecycle request refused by rcl: {exc}')
            response.success = False
            return response

    def _respond(self, response, header):
        if isinstance(response, _Held):
            response.header = header   # answered by release_held_transition
            return
        self._send_change_state_response(response, header)

    def destroy_entities(self, entities):
        """Destroy publishers, subscriptions, services and timers made in on_configure."""
        from rclpy.publisher import Publisher
        from rclpy.service import Service
        from rclpy.subscription import Subscription
        from rclpy.timer import Timer
        for entity in entities:
            if isinstance(entity, Publisher):
                self.destroy_publisher(entity)
            elif isinstance(entity, Subscription):
                self.destroy_subscription(entity)
            elif isinstance(entity, Service):
                self.destroy_service(entity)
            elif isinstance(entity, Timer):
                self.destroy_timer(entity)

    def release_held_transition(self) -> bool:
        """Carry out the held transition now and answer it; False when none is ready."""
        held = self._held
        if held is None or held.header is None:
            return False
        self._held = None
        response = self._change_state(held.request, ChangeState.Response())
        self._send_change_state_response(response, held.header)
        return True
