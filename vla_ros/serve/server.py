"""
The policy server: one loaded ``Policy`` answering several robots over gRPC.

Requests are authenticated (``Authenticator``: per-robot token, mTLS client certificate, or,
only when asked, nobody), rate-limited per robot (token bucket), checked (size, fields,
frame), decoded on the gRPC handler thread and handed to the scheduler. The scheduler keeps
**one pending request per robot**: a newer frame from the same robot replaces one still
waiting (which is answered ABORTED), and the model workers take the robots' pending requests
oldest first, so one busy robot cannot starve another. A request whose deadline passes
while it waits is dropped unrun (DEADLINE_EXCEEDED). Batching (``max_batch`` > 1, ONNX Runtime
and torch backends): a worker takes up to that many robots' pending frames and runs them in
one backend call along the graph's batch axis; a robot never has two frames in a batch
(one pending request each), and every reply carries exactly that robot's tokens.

Every error is a gRPC status (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED,
RESOURCE_EXHAUSTED, FAILED_PRECONDITION, DEADLINE_EXCEEDED, UNAVAILABLE while draining);
no request can raise out of a handler or hold a thread past its deadline (at most
``max_queue_wait``).
"""

from collections import OrderedDict
from dataclasses import dataclass, field
import hmac
import logging
import threading
import time
from typing import Dict, List, Optional, Tuple
import uuid

import grpc
import numpy as np

from ..core import model_contract as mc
from ..wire import protocol
from ..wire.protocol import pb

_log = logging.getLogger('vla_ros.serve')


@dataclass(frozen=True)
class Limits:
    """What one request and one robot may ask of the server."""

    max_request_bytes: int = 4 * 1024 * 1024
    rate_limit_hz: float = 30.0       # requests per second per robot (all RPCs)
    rate_burst: int = 10
    max_queue_wait: float = 2.0       # longest a request waits for the model (s)
    max_robots: int = 64              # distinct robot ids with a queue at once
    robot_idle_s: float = 60.0        # a robot's queue and bucket are forgotten after this
    max_concurrent_rpcs: int = 64
    handler_threads: int = 16
    max_batch: int = 1                # robots' frames run in one model call (1: no batching)


class AuthError(Exception):
    """Refused credentials: ``code`` and a message safe to send back."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Authenticator:
    """
    Who is asking: a robot id from its token, its client certificate, or (no auth) itself.

    ``tokens`` maps ``sha256:<hex>`` digests of tokens to robot ids (the tokens file holds
    ``robot_id: sha256:<hex>``; the tokens themselves never are on the server). ``mtls``:
    the robot id is the client certificate's common name (the TLS layer already refused
    clients without a certificate signed by the configured CA). With both, the token's robot
    must be the certificate's. ``none``: the request's robot_id is taken as given.
    """

    tokens: Dict[str, str] = field(default_factory=dict)
    mtls: bool = False

    @property
    def enabled(self) -> bool:
        """Tell whether clients are authenticated at all."""
        return bool(self.tokens) or self.mtls

    def identify(self, context, claimed: str) -> str:
        """Return the authenticated robot id; AuthError when refused."""
        robot = None
        if self.mtls:
            names = (context.auth_context() or {}).get('x509_common_name') or []
            if not names:
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                                'no client certificate common name')
            robot = names[0].decode('utf-8', 'replace')
        if self.tokens:
            token = ''
            for key, value in context.invocation_metadata() or ():
                if key == protocol.AUTH_METADATA and isinstance(value, str):
                    token = value[7:] if value.startswith('Bearer ') else ''
            if not token:
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                                'missing "authorization: Bearer <token>" metadata')
            digest = protocol.token_digest(token)
            owner = None
            for known, name in self.tokens.items():  # constant time per entry
                if hmac.compare_digest(known, digest):
                    owner = name
            if owner is None:
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED, 'unknown token')
            if robot is not None and owner != robot:
                raise AuthError(grpc.StatusCode.PERMISSION_DENIED,
                                'token and client certificate name different robots')
            robot = owner
        if robot is None:  # no authentication configured (explicit insecure flag)
            robot = claimed or 'anonymous'
        if claimed and claimed != robot:
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED,
                            f'robot_id {claimed[:64]!r} is not the authenticated robot')
        if not protocol.ROBOT_ID_PATTERN.match(robot):
            raise AuthError(grpc.StatusCode.INVALID_ARGUMENT,
                            'robot_id must be 1-64 of [A-Za-z0-9_.-]')
        return robot


class TokenBucket:
    """A request budget refilled at ``rate`` per second up to ``burst``."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = float(rate), float(burst)
        self.level, self.at = float(burst), time.monotonic()

    def take(self) -> bool:
        """Spend one request; False when the budget is empty."""
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level >= 1.0:
            self.level -= 1.0
            return True
        return False


class _Job:
    """One Predict request between its handler thread and a model worker."""

    __slots__ = ('robot', 'request', 'rgb', 'state', 'received', 'deadline', 'done',
                 'reply', 'error', 'cancelled', 'decode_ms', 'started')

    def __init__(self, robot, request, rgb, state, received, deadline, decode_ms):
        self.robot, self.request, self.rgb, self.state = robot, request, rgb, state
        self.received, self.deadline, self.decode_ms = received, deadline, decode_ms
        self.done = threading.Event()
        self.reply: Optional[pb.PredictReply] = None
        self.error: Optional[Tuple[grpc.StatusCode, str]] = None
        self.cancelled = False
        self.started = 0.0


class PolicyService:
    """The servicer: authentication, limits, checks, the per-robot queues, the workers."""

    def __init__(self, policy, backend_name: str, auth: Authenticator, limits: Limits,
                 workers: int = 1, model_delay_s: float = 0.0):
        self.policy = policy
        # Added to every model run: emulates a larger model (tests, latency benchmarks).
        self.model_delay_s = float(model_delay_s)
        self.auth = auth
        self.limits = limits
        self.instance = uuid.uuid4().hex[:16]
        self.started = time.monotonic()
        meta = policy.metadata
        verification = getattr(policy.backend, 'verification', None)
        self.model_id = protocol.model_id(meta, getattr(verification, 'sha256', ''))
        self.space_id = policy.space.identity
        from ..runtime.verify import unverified_files
        self.info = pb.ModelInfo(
            protocol_version=protocol.PROTOCOL_VERSION, model_id=self.model_id,
            model_config=meta.get(mc.META_CONFIG, ''), action_space=self.space_id,
            state_dim=policy.state_dim, image_width=mc.IMAGE_SIZE[1],
            image_height=mc.IMAGE_SIZE[0], tokens_per_step=mc.NUM_ACTION_TOKENS,
            steps=getattr(policy, 'chunk_steps', 1),
            trained=policy.trained, backend=backend_name,
            active_providers=list(policy.active_providers),
            model_files_verified=not unverified_files(), server_instance=self.instance,
            encodings=list(protocol.ENCODINGS.values()),
            max_request_bytes=limits.max_request_bytes)
        self._lock = threading.Condition()
        self._pending: 'OrderedDict[str, _Job]' = OrderedDict()  # robot → its newest job
        self._buckets: Dict[str, TokenBucket] = {}
        self._seen: Dict[str, float] = {}
        self._encode_lock = threading.Lock()
        self.draining = False
        self.stopped = False
        self.counters: Dict[str, int] = {}
        self._workers = [threading.Thread(target=self._work, name=f'vla-serve-model-{i}',
                                          daemon=True) for i in range(max(1, int(workers)))]
        for thread in self._workers:
            thread.start()

    # -- bookkeeping ----------------------------------------------------------------------
    def _count(self, key: str):
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + 1

    def _admit(self, context, claimed: str) -> str:
        """Authenticate and rate-limit; abort the RPC (raises) when refused."""
        try:
            robot = self.auth.identify(context, claimed)
        except AuthError as exc:
            self._count('rejected_auth')
            _log.warning(f'refused {context.peer()}: {exc}')
            context.abort(exc.code, str(exc))
        now = time.monotonic()
        with self._lock:
            for name, seen in list(self._seen.items()):  # forget idle robots
                if now - seen > self.limits.robot_idle_s and name not in self._pending:
                    self._seen.pop(name, None)
                    self._buckets.pop(name, None)
            if robot not in self._seen and len(self._seen) >= self.limits.max_robots:
                full = True
            else:
                full = False
                self._seen[robot] = now
                bucket = self._buckets.setdefault(
                    robot, TokenBucket(self.limits.rate_limit_hz, self.limits.rate_burst))
                allowed = bucket.take()
        if full:
            self._count('rejected_robots')
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f'serving {self.limits.max_robots} robots already')
        if not allowed:
            self._count('rejected_rate')
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f'rate limit: {self.limits.rate_limit_hz:g} requests/s per robot')
        return robot

    # -- RPCs -----------------------------------------------------------------------------
    def health(self, request, context) -> pb.HealthReply:
        """Answer Health (authenticated, never waits for the model)."""
        self._admit(context, '')
        with self._lock:
            pending, robots = len(self._pending), len(self._seen)
            served = self.counters.get('served', 0)
            rejected = sum(v for k, v in self.counters.items() if k.startswith('rejected'))
        status = pb.HealthReply.DRAINING if self.draining else pb.HealthReply.SERVING
        return pb.HealthReply(status=status, server_instance=self.instance,
                              uptime_s=time.monotonic() - self.started, model_id=self.model_id,
                              robots=robots, pending=pending, served=served, rejected=rejected)

    def model_info(self, request, context) -> pb.ModelInfo:
        """Answer GetModelInfo."""
        self._admit(context, '')
        return self.info

    def predict(self, request, context) -> pb.PredictReply:
        """Answer Predict: check, queue (newest per robot wins), wait for the model."""
        received = time.monotonic()
        if self.draining:
            context.abort(grpc.StatusCode.UNAVAILABLE, 'server is shutting down')
        robot = self._admit(context, request.robot_id)
        t0 = time.perf_counter()
        rgb, state = self._check(request, context)
        decode_ms = (time.perf_counter() - t0) * 1e3
        remaining = context.time_remaining()
        wait = self.limits.max_queue_wait
        if remaining is not None:
            wait = min(wait, max(0.0, remaining))
        job = _Job(robot, request, rgb, state, received, received + wait, decode_ms)
        with self._lock:
            older = self._pending.pop(robot, None)
            if older is not None:
                older.cancelled = True
                older.error = (grpc.StatusCode.ABORTED, 'superseded by a newer frame from the '
                               'same robot')
                older.done.set()
            self._pending[robot] = job
            self._lock.notify()
        context.add_callback(lambda: self._cancel(job))
        if not job.done.wait(wait):
            self._cancel(job)
            # A worker that already started this job finishes it; give it the model time.
            if job.started:
                job.done.wait(max(0.05, job.deadline - time.monotonic()) + 1.0)
        if job.reply is not None:
            return job.reply
        code, message = job.error or (grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f'not run within {wait:.3f} s (queue or deadline)')
        self._count({grpc.StatusCode.ABORTED: 'superseded',
                     grpc.StatusCode.DEADLINE_EXCEEDED: 'deadline_exceeded'}.get(
                         code, 'failed'))
        context.abort(code, message)

    def _cancel(self, job: _Job):
        with self._lock:
            job.cancelled = True
            if self._pending.get(job.robot) is job:
                del self._pending[job.robot]

    def _check(self, request, context) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Validate a request's fields and decode its frame; abort INVALID_ARGUMENT if bad."""
        def bad(message):
            self._count('rejected_invalid')
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

        if request.expected_model_id and request.expected_model_id != self.model_id:
            self._count('rejected_model')
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f'this server runs model {self.model_id}, the client expects '
                          f'{request.expected_model_id[:80]}')
        if request.expected_action_space and request.expected_action_space != self.space_id:
            self._count('rejected_model')
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f'this server runs action space {self.space_id}, the client expects '
                          f'{request.expected_action_space[:80]}')
        text = request.instruction.strip()
        if not text:
            bad('instruction is empty')
        if len(text) > protocol.MAX_INSTRUCTION_CHARS:
            bad(f'instruction longer than {protocol.MAX_INSTRUCTION_CHARS} characters')
        if request.source_stamp_ns < 0:
            bad('source_stamp_ns is negative')
        state = None
        dim = self.policy.state_dim
        if dim:
            state = np.asarray(request.state, dtype=np.float32)
            if state.shape != (dim,) or not np.all(np.isfinite(state)):
                bad(f'state must be {dim} finite values, found {len(request.state)}')
        elif len(request.state):
            bad('this model has no state input; send no state')
        try:
            rgb = protocol.decode_frame(request.frame, mc.IMAGE_SIZE)
        except protocol.FrameError as exc:
            bad(str(exc))
        return rgb, state

    # -- model workers --------------------------------------------------------------------
    def _next_jobs(self) -> List[_Job]:
        """Take the oldest robots' newest frames, up to ``max_batch`` (empty: stopped)."""
        with self._lock:
            while not self._pending and not self.stopped:
                self._lock.wait(0.5)
            if self.stopped:
                return []
            jobs = []
            while self._pending and len(jobs) < max(1, self.limits.max_batch):
                _, job = self._pending.popitem(last=False)
                job.started = time.monotonic()
                jobs.append(job)
            return jobs

    def _work(self):
        while True:
            jobs = self._next_jobs()
            if not jobs:
                return
            live = []
            for job in jobs:
                if job.cancelled or time.monotonic() > job.deadline:
                    job.error = job.error or (grpc.StatusCode.DEADLINE_EXCEEDED,
                                              'deadline passed while queued')
                    job.done.set()
                else:
                    live.append(job)
            if not live:
                continue
            try:
                replies = self._run(live)
                for job, reply in zip(live, replies):
                    job.reply = reply
                    self._count('served')
                if len(live) > 1:
                    self._count('batched_calls')
            except Exception as exc:  # a backend error answers these requests, not the server
                _log.error(f'inference failed for {[j.robot for j in live]}: {exc!r}')
                for job in live:
                    job.error = (grpc.StatusCode.INTERNAL, f'inference failed: {exc}'[:300])
            for job in live:
                job.done.set()

    def _run(self, jobs: List[_Job]) -> List[pb.PredictReply]:
        texts = [job.request.instruction.strip() for job in jobs]
        with self._encode_lock:  # the embedding cache is not thread-safe
            for text in texts:
                self.policy.encode(text)
        t0 = time.perf_counter()
        if self.model_delay_s > 0:
            time.sleep(self.model_delay_s)
        preds = self.policy.predict_batch([job.rgb for job in jobs], texts,
                                          [job.state for job in jobs])
        model_ms = (time.perf_counter() - t0) * 1e3
        return [self._reply(job, pred, model_ms) for job, pred in zip(jobs, preds)]

    def _reply(self, job: _Job, pred, model_ms: float) -> pb.PredictReply:
        request = job.request
        queue_ms = (job.started - job.received) * 1e3 - job.decode_ms
        tokens = np.asarray(pred.tokens, dtype=np.uint8)
        timing = pb.Timing(queue_ms=max(0.0, queue_ms), decode_ms=job.decode_ms,
                           model_ms=model_ms,
                           total_ms=(time.monotonic() - job.received) * 1e3)
        return pb.PredictReply(
            tokens=tokens.tobytes(), steps=int(tokens.size) // mc.NUM_ACTION_TOKENS,
            tokens_per_step=mc.NUM_ACTION_TOKENS,
            action_space=self.space_id, model_id=self.model_id,
            source_stamp_ns=request.source_stamp_ns, frame_id=request.frame_id,
            sequence=request.sequence, timing=timing, server_instance=self.instance)

    def stop_workers(self):
        """Fail every pending request and stop the model workers."""
        with self._lock:
            self.stopped = True
            for job in self._pending.values():
                job.error = (grpc.StatusCode.UNAVAILABLE, 'server is shutting down')
                job.done.set()
            self._pending.clear()
            self._lock.notify_all()
        for thread in self._workers:
            thread.join(timeout=5.0)


def _handlers(service: PolicyService) -> grpc.GenericRpcHandler:
    calls = {'Predict': service.predict, 'Health': service.health,
             'GetModelInfo': service.model_info}
    handlers = {}
    for name, (request_cls, reply_cls) in protocol.METHODS.items():
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            calls[name], request_deserializer=request_cls.FromString,
            response_serializer=reply_cls.SerializeToString)
    return grpc.method_handlers_generic_handler(protocol.SERVICE, handlers)


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key (PEM), and the CA that signs client certificates (mTLS)."""

    cert: str
    key: str
    client_ca: str = ''


def _read(path: str) -> bytes:
    with open(path, 'rb') as stream:
        return stream.read()


class PolicyServer:
    """A gRPC server around a ``PolicyService``; ``stop`` drains it gracefully."""

    def __init__(self, service: PolicyService, address: str, tls: Optional[TlsFiles]):
        from concurrent import futures
        limits = service.limits
        self.service = service
        options = [('grpc.max_receive_message_length', limits.max_request_bytes),
                   ('grpc.max_send_message_length', 1024 * 1024),
                   ('grpc.so_reuseport', 0),
                   ('grpc.keepalive_time_ms', 20000),
                   ('grpc.keepalive_timeout_ms', 10000),
                   ('grpc.http2.max_pings_without_data', 0),
                   ('grpc.keepalive_permit_without_calls', 1),
                   ('grpc.http2.min_ping_interval_without_data_ms', 5000)]
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=limits.handler_threads,
                                       thread_name_prefix='vla-serve-rpc'),
            handlers=[_handlers(service)], options=options,
            maximum_concurrent_rpcs=limits.max_concurrent_rpcs)
        try:
            if tls is None:
                self.port = self.server.add_insecure_port(address)
            else:
                root = _read(tls.client_ca) if tls.client_ca else None
                credentials = grpc.ssl_server_credentials(
                    [(_read(tls.key), _read(tls.cert))], root_certificates=root,
                    require_client_auth=bool(root))
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
            service.stop_workers()
            raise OSError(f'cannot listen on {address}: {exc}') from exc
        if not self.port:
            service.stop_workers()
            raise OSError(f'cannot listen on {address}')

    def start(self):
        """Start answering."""
        self.server.start()

    def stop(self, grace: float = 5.0):
        """Refuse new requests, let in-flight ones finish for ``grace`` s, stop the workers."""
        self.service.draining = True
        done = self.server.stop(grace)
        done.wait(grace + 1.0)
        self.service.stop_workers()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the server stops (or ``timeout``); True when stopped."""
        return self.server.wait_for_termination(timeout)


def load_tokens(path: str) -> Dict[str, str]:
    """
    Read a tokens file (YAML ``robot_id: sha256:<64 hex>``); return digest → robot id.

    ValueError names the line that is wrong.
    """
    import yaml
    with open(path, encoding='utf-8') as stream:
        data = yaml.safe_load(stream) or {}
    if not isinstance(data, dict):
        raise ValueError(f'{path}: expected a map of robot_id: sha256:<64 hex>')
    out: Dict[str, str] = {}
    for robot, digest in data.items():
        robot = str(robot)
        if not protocol.ROBOT_ID_PATTERN.match(robot):
            raise ValueError(f'{path}: robot id {robot!r} must be 1-64 of [A-Za-z0-9_.-]')
        digest = str(digest)
        hexpart = digest[7:] if digest.startswith('sha256:') else ''
        if len(hexpart) != 64 or any(c not in '0123456789abcdef' for c in hexpart):
            raise ValueError(f'{path}: {robot}: expected sha256:<64 lowercase hex> (vla-ros '
                             'serve --new-token ROBOT prints it), found something else')
        if digest in out:
            raise ValueError(f'{path}: {robot} and {out[digest]} share a token')
        out[digest] = robot
    return out


def counters_line(service: PolicyService) -> str:
    """Return the service counters as one log line."""
    with service._lock:
        items: List[str] = [f'{k}={v}' for k, v in sorted(service.counters.items())]
    return ' '.join(items) or 'no requests'
