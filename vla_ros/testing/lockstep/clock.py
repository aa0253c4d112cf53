"""The sim clock the driver moves, the barrier rounds that wait for a quiet graph, publishing."""

import time
from typing import Callable, Optional, Sequence

from .records import NotQuiet, NS, period_grid
from ... import service_calls


class Clock:
    """Clock steps, barriers and publishing, as a part of ``Lockstep`` (its state lives there)."""

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
