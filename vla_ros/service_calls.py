"""
Service calls that survive a lost answer: one helper for the tools, the tests and the nodes.

A service answer can be lost. Right after discovery, or on a loaded machine, rmw_fastrtps
gives up sending a response whose client reader it has not matched yet ("failed to send
response (timeout)"), and an rclpy client then waits for it forever. Every call here
therefore has a bounded deadline, and:

* ``call`` (for requests that may be repeated without changing anything: parameters,
  ``get_state``, ``vla/enable``, ``sim/reset`` of a chosen episode, the lock-step barrier)
  sends the request again when no answer came ``retry_after`` seconds after the last copy
  (1, 2, 4, 4 ... s): an answer to any copy will do;
* ``ChangeStateCall`` / ``change_state`` (a lifecycle transition, which must not be sent
  twice: the copy would be refused) sends the request once; when no answer came after
  ``retry_after``, it asks the node's ``get_state`` (repeatable) and takes a node found in
  the transition's goal state, having been elsewhere before, as the answer ``success:
  true``. A held transition (``nodes/managed.py``) is answered when it is carried out, which
  is also when the state changes, so a lost answer is recovered at the same moment.

Who spins: with ``spin`` (a callable taking a timeout, e.g. ``executor.spin_once``) the
caller's thread runs the client's executor while it waits (the lock-step driver, a test
that owns its executor); without it another thread spins (``testing/probe.Probe``,
lifecycle_manager's worker thread) and the caller waits on the answer's event. ``check`` is
called while waiting (e.g. to raise when a node process died).
"""

import threading
import time
from typing import Callable, Optional

RETRY_AFTER = 1.0       # first re-send (s); doubles up to RETRY_MAX
RETRY_MAX = 4.0
POLL = 0.05             # spin / check period (s)


class ServiceCallError(RuntimeError):
    """The service was not available, or did not answer, before the deadline."""


def _waiter(spin: Optional[Callable[[float], object]], check: Optional[Callable[[], None]]):
    """Return wait(seconds, event): spin the caller's executor or wait on the event."""
    def wait(seconds: float, event: threading.Event):
        if check is not None:
            check()
        seconds = max(0.0, seconds)
        if spin is not None:
            spin(min(POLL, seconds))
        else:
            event.wait(min(POLL, seconds) if check is not None else seconds)
    return wait


def wait_for_service(client, deadline: float, spin=None, check=None, what: str = ''):
    """Wait until ``client``'s service is matched, until ``deadline`` (monotonic s)."""
    if spin is None and check is None:
        if client.wait_for_service(timeout_sec=max(0.0, deadline - time.monotonic())):
            return
    else:
        wait = _waiter(spin, check)
        never = threading.Event()
        while not client.service_is_ready():
            if time.monotonic() >= deadline:
                break
            if spin is None:
                client.wait_for_service(timeout_sec=min(POLL, deadline - time.monotonic()))
                if check is not None:
                    check()
            else:
                wait(deadline - time.monotonic(), never)
        if client.service_is_ready():
            return
    raise ServiceCallError(f'service {what or client.srv_name} not available')


def call(client, request, timeout: float = 15.0, *, spin=None, check=None,
         retry_after: float = RETRY_AFTER, what: str = ''):
    """
    Call ``client`` with ``request`` and return the answer; ServiceCallError at the deadline.

    Only for requests that may be sent more than once (see the module docstring): without
    an answer ``retry_after`` s after the last copy, the request is sent again.
    """
    name = what or client.srv_name
    deadline = time.monotonic() + timeout
    wait_for_service(client, deadline, spin, check, name)
    answered = threading.Event()
    wait = _waiter(spin, check)
    futures = []
    pause = retry_after
    try:
        while True:
            future = client.call_async(request)
            future.add_done_callback(lambda _: answered.set())
            futures.append(future)
            resend = min(deadline, time.monotonic() + pause)
            pause = min(2 * pause, RETRY_MAX)
            while True:
                for future in futures:
                    if future.done():
                        return future.result()
                now = time.monotonic()
                if now >= resend:
                    break
                wait(resend - now, answered)
            if time.monotonic() >= deadline:
                raise ServiceCallError(f'service {name}: no answer within {timeout:g} s '
                                       f'({len(futures)} requests sent)')
    finally:
        for future in futures:
            if not future.done():
                client.remove_pending_request(future)


# -- lifecycle transitions ---------------------------------------------------------------------
def _goal_states():
    from lifecycle_msgs.msg import State, Transition
    finalized = State.PRIMARY_STATE_FINALIZED
    by_id = {Transition.TRANSITION_CONFIGURE: State.PRIMARY_STATE_INACTIVE,
             Transition.TRANSITION_CLEANUP: State.PRIMARY_STATE_UNCONFIGURED,
             Transition.TRANSITION_ACTIVATE: State.PRIMARY_STATE_ACTIVE,
             Transition.TRANSITION_DEACTIVATE: State.PRIMARY_STATE_INACTIVE,
             Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: finalized,
             Transition.TRANSITION_INACTIVE_SHUTDOWN: finalized,
             Transition.TRANSITION_ACTIVE_SHUTDOWN: finalized}
    by_label = {'configure': State.PRIMARY_STATE_INACTIVE,
                'cleanup': State.PRIMARY_STATE_UNCONFIGURED,
                'activate': State.PRIMARY_STATE_ACTIVE,
                'deactivate': State.PRIMARY_STATE_INACTIVE, 'shutdown': finalized}
    return by_id, by_label


class ChangeStateCall:
    """
    One lifecycle transition request in flight, with a future's ``done()`` / ``result()``.

    ``before`` is the node's primary state id when the request was sent (asked with
    ``get_state`` by ``start``). ``done()`` never blocks: the caller spins (or another
    thread does) and asks again.
    """

    def __init__(self, change_client, get_client, transition: int, label: str = '',
                 retry_after: float = RETRY_AFTER):
        """Prepare the request (nothing is sent before ``send``)."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        self.change_client = change_client
        self.get_client = get_client
        self.request = ChangeState.Request(transition=Transition(id=int(transition),
                                                                 label=label))
        by_id, by_label = _goal_states()
        self.goal = by_label.get(label) if label else by_id.get(int(transition))
        self.retry_after = retry_after
        self.before: Optional[int] = None
        self.future = None
        self.recovered = False   # the answer was lost and taken from get_state
        self._response = None
        self._asked = None       # (get_state future, when)
        self._last_ask = 0.0     # when get_state was last asked (or the request sent)

    def send(self, before: int):
        """Send the request; ``before``: the node's state id now (from ``get_state``)."""
        self.before = int(before)
        self.future = self.change_client.call_async(self.request)
        self._last_ask = time.monotonic()

    def done(self) -> bool:
        """Return whether the answer is known (received, or recovered from get_state)."""
        if self._response is not None:
            return True
        if self.future.done():
            self._response = self.future.result()
            self._forget_question()
            return True
        if self.goal is None or self.goal == self.before:
            return False   # a refused request leaves the state as it was: nothing to read
        now = time.monotonic()
        if self._asked is not None and self._asked[0].done():
            state = self._asked[0].result().current_state.id
            self._asked = None
            if state == self.goal:
                from lifecycle_msgs.srv import ChangeState
                self._response = ChangeState.Response(success=True)
                self.recovered = True
                self.change_client.remove_pending_request(self.future)
                return True
        if self._asked is not None and now - self._asked[1] > self.retry_after:
            self._forget_question()
        if self._asked is None and now - self._last_ask > self.retry_after:
            from lifecycle_msgs.srv import GetState
            self._asked = (self.get_client.call_async(GetState.Request()), now)
            self._last_ask = now
        return False

    def _forget_question(self):
        if self._asked is not None:
            if not self._asked[0].done():
                self.get_client.remove_pending_request(self._asked[0])
            self._asked = None

    def result(self):
        """Return the answer (``done()`` must be True)."""
        if not self.done():
            raise RuntimeError('the transition has no answer yet')
        return self._response

    def cancel(self):
        """Stop waiting (forget the pending requests)."""
        if self.future is not None and not self.future.done():
            self.change_client.remove_pending_request(self.future)
        self._forget_question()


def get_state(get_client, timeout: float = 15.0, *, spin=None, check=None) -> int:
    """Return the node's primary state id (``get_state``, repeated until it answers)."""
    from lifecycle_msgs.srv import GetState
    return call(get_client, GetState.Request(), timeout, spin=spin,
                check=check).current_state.id


def start_change_state(change_client, get_client, transition: int, label: str = '',
                       timeout: float = 15.0, *, spin=None, check=None) -> ChangeStateCall:
    """Ask the node's state, then send the transition; return the ChangeStateCall."""
    pending = ChangeStateCall(change_client, get_client, transition, label)
    before = get_state(get_client, timeout, spin=spin, check=check)
    wait_for_service(change_client, time.monotonic() + timeout, spin, check)
    pending.send(before)
    return pending


def wait_answer(pending: ChangeStateCall, timeout: float, *, spin=None, check=None,
                what: str = ''):
    """Wait (``timeout`` s at most) for a ChangeStateCall's answer and return it."""
    deadline = time.monotonic() + timeout
    answered = threading.Event()
    pending.future.add_done_callback(lambda _: answered.set())
    wait = _waiter(spin, check)
    while not pending.done():
        now = time.monotonic()
        if now >= deadline:
            pending.cancel()
            raise ServiceCallError(f'{what or pending.change_client.srv_name}: no answer '
                                   f'within {timeout:g} s')
        # Wake up at least every POLL s without a spinner: get_state is asked meanwhile.
        wait(min(POLL, deadline - now) if spin is None else deadline - now, answered)
    return pending.result()


def change_state(change_client, get_client, transition: int, timeout: float = 15.0, *,
                 label: str = '', spin=None, check=None):
    """Carry out one lifecycle transition and return its answer (see ChangeStateCall)."""
    deadline = time.monotonic() + timeout
    pending = start_change_state(change_client, get_client, transition, label, timeout,
                                 spin=spin, check=check)
    return wait_answer(pending, max(0.0, deadline - time.monotonic()), spin=spin, check=check)
