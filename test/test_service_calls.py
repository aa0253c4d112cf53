"""vla_ros.service_calls on fake clients: a lost answer is survived, the deadline holds."""

import time

from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import GetState
import pytest
from rclpy.task import Future
from vla_ros import service_calls


def _spin(seconds):
    """Stand in for an executor's spin_once: nothing to run, the time passes."""
    time.sleep(min(seconds, 0.01))


class FakeClient:
    """A client whose answers the test decides: ``answer(n)`` gives the n-th request's."""

    srv_name = '/fake'

    def __init__(self, answer=lambda n, request: None):
        self.answer = answer
        self.sent = []
        self.removed = []

    def service_is_ready(self):
        return True

    def wait_for_service(self, timeout_sec=None):
        return True

    def call_async(self, request):
        future = Future()
        self.sent.append(future)
        result = self.answer(len(self.sent), request)
        if result is not None:
            future.set_result(result)
        return future

    def remove_pending_request(self, future):
        self.removed.append(future)


def test_a_lost_answer_is_asked_again_and_the_copies_forgotten():
    client = FakeClient(lambda n, request: 'answer' if n == 3 else None)  # two lost
    assert service_calls.call(client, 'request', 10.0, retry_after=0.02,
                              spin=_spin) == 'answer'
    assert len(client.sent) == 3 and client.removed == client.sent[:2]


def test_no_answer_ends_at_the_deadline():
    client = FakeClient()
    with pytest.raises(service_calls.ServiceCallError, match='no answer within'):
        service_calls.call(client, 'request', 0.2, retry_after=0.02)
    assert client.sent and client.removed == client.sent


def _state(state_id):
    return GetState.Response(current_state=State(id=state_id))


def test_a_transition_is_sent_once_and_a_lost_answer_read_from_the_state():
    states = iter([State.PRIMARY_STATE_ACTIVE] + [State.PRIMARY_STATE_FINALIZED] * 10)
    get = FakeClient(lambda n, request: _state(next(states)))
    change = FakeClient()   # the answer to the transition is lost
    answer = service_calls.change_state(change, get, Transition.TRANSITION_ACTIVE_SHUTDOWN,
                                        5.0, spin=_spin)
    assert answer.success and len(change.sent) == 1


def test_a_refused_transition_is_never_taken_for_a_lost_answer():
    # deactivate sent to an inactive node: the state is already deactivate's goal, so only
    # the node's own answer counts (here it never comes: the deadline ends the wait).
    get = FakeClient(lambda n, request: _state(State.PRIMARY_STATE_INACTIVE))
    change = FakeClient()
    with pytest.raises(service_calls.ServiceCallError):
        service_calls.change_state(change, get, Transition.TRANSITION_DEACTIVATE, 0.3,
                                   spin=_spin)
    assert len(change.sent) == 1


def test_a_received_answer_is_taken_as_it_is():
    get = FakeClient(lambda n, request: _state(State.PRIMARY_STATE_ACTIVE))
    change = FakeClient(lambda n, request: 'refused')
    assert service_calls.change_state(change, get, Transition.TRANSITION_CONFIGURE, 5.0,
                                      spin=_spin) == 'refused'
