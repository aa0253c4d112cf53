"""
The robot's side of the remote policy (inference_node ``backend: remote``).

``RemoteClient`` is the channel: TLS (server certificate checked against ``ca_file``), the
robot's credentials (a client certificate for mutual TLS and/or a per-robot bearer token),
and the three RPCs of ``wire/_proto/policy_v1.proto``. ``RemotePolicy`` is what the node
drives, never blocking its executor:

* ``connect`` (in ``configure``) asks the server what it runs and refuses a server whose
  action space is not the node's, whose model is not ``remote_model_id`` (when set), or
  whose input contract the node cannot feed;
* ``submit`` encodes the newest frame and sends it as an asynchronous call with a deadline
  (at most ``max_in_flight`` at once: otherwise the frame is skipped, not queued); the reply
  comes back on a gRPC thread to ``on_reply`` with the frame's *source stamp*;
* a failed call is counted by cause; UNAVAILABLE (and any failure of the connection check)
  marks the server down, and a thread of its own reconnects with exponential backoff,
  checking the model and action space again before any frame is sent (a restarted server
  may run another model). A changed ``server_instance`` counts a server restart.

Plain Python (no rclpy): the node passes ``count``/``set`` (its Diagnostics) and ``log``.
"""

from dataclasses import dataclass
import random
import threading
import time
from typing import Callable, Dict, Optional

import numpy as np

from .base import BackendError
from ..core.params import defaults

REMOTE_BACKEND = 'remote'


class RemoteError(BackendError):
    """The remote server cannot be used as configured (unreachable, refused, other model)."""


# inference_node's remote_* parameter defaults: the schema is their one source.
_DEFAULTS = defaults('inference_node')


@dataclass(frozen=True)
class RemoteOptions:
    """inference_node's ``remote_*`` parameters; defaults from the schema (core/params.py)."""

    endpoint: str = _DEFAULTS['remote_endpoint']
    robot_id: str = _DEFAULTS['remote_robot_id']
    ca_file: str = _DEFAULTS['remote_ca_file']
    cert_file: str = _DEFAULTS['remote_cert_file']
    key_file: str = _DEFAULTS['remote_key_file']
    token_file: str = _DEFAULTS['remote_token_file']
    server_name: str = _DEFAULTS['remote_server_name']
    insecure: bool = _DEFAULTS['remote_insecure']
    deadline: float = _DEFAULTS['remote_deadline']
    connect_timeout: float = _DEFAULTS['remote_connect_timeout']
    compression: str = _DEFAULTS['remote_compression']
    jpeg_quality: int = _DEFAULTS['remote_jpeg_quality']
    max_in_flight: int = _DEFAULTS['remote_max_in_flight']
    model_id: str = _DEFAULTS['remote_model_id']
    reconnect_backoff_max: float = _DEFAULTS['remote_reconnect_backoff_max']

    PREFIX = 'remote_'

    @classmethod
    def take(cls, values: Dict[str, object]) -> 'RemoteOptions':
        """Remove the ``remote_*`` entries from a node's parameter values; return them."""
        names = set(cls.__dataclass_fields__)
        picked = {}
        for key in [k for k in values if k.startswith(cls.PREFIX)]:
            name = key[len(cls.PREFIX):]
            value = values.pop(key)
            if name in names:
                picked[name] = value
        return cls(**picked)

    def check(self):
        """Raise ValueError naming the first parameter that cannot work."""
        from ..wire.protocol import ENCODINGS, ROBOT_ID_PATTERN
        if not self.endpoint:
            raise ValueError('remote_endpoint is empty: set host:port of `vla-ros serve`')
        if not ROBOT_ID_PATTERN.match(self.robot_id):
            raise ValueError(f'remote_robot_id must be 1-64 of [A-Za-z0-9_.-], found '
                             f'{self.robot_id!r}')
        if self.compression not in ENCODINGS:
            raise ValueError(f'remote_compression must be one of {sorted(ENCODINGS)}, found '
                             f'{self.compression!r}')
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError('remote_cert_file and remote_key_file go together (mutual TLS)')
        if self.insecure and (self.ca_file or self.cert_file):
            raise ValueError('remote_insecure (plaintext) cannot use remote_ca_file / '
                             'remote_cert_file: drop one or the other')
        for name in ('ca_file', 'cert_file', 'key_file', 'token_file'):
            path = getattr(self, name)
            if path and not _readable(path):
                raise ValueError(f'remote_{name} {path!r} cannot be read')
        if not self.insecure and not self.ca_file:
            raise ValueError('remote_ca_file is empty: TLS needs the CA that signed the '
                             "server's certificate (or remote_insecure: true on a trusted "
                             'network)')
        if not (self.deadline > 0 and self.connect_timeout > 0 and self.max_in_flight >= 1):
            raise ValueError('remote_deadline and remote_connect_timeout must be > 0 s and '
                             'remote_max_in_flight >= 1')


def _readable(path: str) -> bool:
    try:
        with open(path, 'rb'):
            return True
    except OSError:
        return False


def _read(path: str) -> bytes:
    with open(path, 'rb') as stream:
        return stream.read()


class RemoteClient:
    """A gRPC channel to ``vla-ros serve`` with the robot's credentials."""

    def __init__(self, options: RemoteOptions):
        import grpc
        from ..wire import protocol
        self.options = options
        self._grpc = grpc
        channel_options = [('grpc.max_receive_message_length', 1024 * 1024),
                           ('grpc.max_send_message_length', 16 * 1024 * 1024),
                           ('grpc.initial_reconnect_backoff_ms', 200),
                           # gRPC also takes this as the least time one connection attempt
                           # (TCP, TLS, HTTP/2 SETTINGS: 2-3 round trips) may take: at 200 ms
                           # no attempt could finish over a 600 ms link (found by bench
                           # remote-loop). A refused connection still fails at once and is
                           # retried after the 200 ms initial backoff.
                           ('grpc.min_reconnect_backoff_ms',
                            int(max(1.0, options.connect_timeout) * 1000)),
                           ('grpc.max_reconnect_backoff_ms',
                            int(options.reconnect_backoff_max * 1000)),
                           ('grpc.keepalive_time_ms', 20000),
                           ('grpc.keepalive_timeout_ms', 5000),
                           ('grpc.enable_retries', 0)]
        if options.server_name:
            channel_options.append(('grpc.ssl_target_name_override', options.server_name))
        self.metadata = ()
        if options.token_file:
            token = _read(options.token_file).decode('utf-8').strip()
            self.metadata = ((protocol.AUTH_METADATA, f'Bearer {token}'),)
        if options.insecure:
            self.channel = grpc.insecure_channel(options.endpoint, options=channel_options)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(options.ca_file),
                private_key=_read(options.key_file) if options.key_file else None,
                certificate_chain=_read(options.cert_file) if options.cert_file else None)
            self.channel = grpc.secure_channel(options.endpoint, credentials,
                                               options=channel_options)
        self._calls = {}
        for name, (request_cls, reply_cls) in protocol.METHODS.items():
            self._calls[name] = self.channel.unary_unary(
                protocol.method_path(name), request_serializer=request_cls.SerializeToString,
                response_deserializer=reply_cls.FromString)

    def model_info(self, timeout: float):
        """Return the server's ModelInfo (grpc.RpcError when it fails)."""
        from ..wire.protocol import pb
        return self._calls['GetModelInfo'](pb.ModelInfoRequest(), timeout=timeout,
                                           metadata=self.metadata)

    def health(self, timeout: float):
        """Return the server's HealthReply (grpc.RpcError when it fails)."""
        from ..wire.protocol import pb
        return self._calls['Health'](pb.HealthRequest(), timeout=timeout,
                                     metadata=self.metadata)

    def predict(self, request, timeout: float):
        """Call Predict and wait (benchmarks and tests; the node uses ``predict_future``)."""
        return self._calls['Predict'](request, timeout=timeout, metadata=self.metadata)

    def predict_future(self, request, timeout: float):
        """Call Predict without waiting; returns a grpc.Future."""
        return self._calls['Predict'].future(request, timeout=timeout, metadata=self.metadata)

    def close(self):
        """Close the channel (calls in flight fail with CANCELLED)."""
        self.channel.close()


def describe_error(exc) -> str:
    """Return ``CODE: details`` of a grpc.RpcError (or repr of anything else)."""
    code = getattr(exc, 'code', None)
    if callable(code):
        try:
            return f'{code().name}: {exc.details()}'
        except Exception:  # a future without a status
            pass
    return repr(exc)


class RemotePolicy:
    """
    The remote model as inference_node uses it (``state_dim``, ``metadata``, ``encode``...).

    ``on_reply(tokens uint8[11], source_stamp_ns, frame_id, reply, round_trip_ms)`` is
    called on a gRPC thread for every valid reply; ``count(key)`` and ``set(key, value)``
    report to the node's diagnostics; ``log(level, text)`` reports state changes (down, up,
    restarts).
    """

    def __init__(self, options: RemoteOptions, action_space: str,
                 on_reply: Callable, count: Callable, set_value: Callable, log: Callable,
                 client: Optional[RemoteClient] = None):
        self.options = options
        self.action_space = action_space
        self._on_reply, self._count, self._set, self._log = on_reply, count, set_value, log
        self.client = client or RemoteClient(options)
        self.info = None
        self.model_id = ''
        self.instance = ''
        self.last_encode_ms = 0.0
        self._lock = threading.Lock()
        self._in_flight = 0
        self._up = False
        self._down_reason = 'not connected'
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._sequence = 0
        self._session = f'{int(time.time())}-{random.getrandbits(32):08x}'
        self._reconnector: Optional[threading.Thread] = None

    # -- what the node reads like a local Policy -----------------------------------------
    @property
    def state_dim(self) -> int:
        """Return the served model's state input size (0: none)."""
        return int(self.info.state_dim) if self.info is not None else 0

    @property
    def chunk_steps(self) -> int:
        """Return the steps per frame of the served model (1: single step; >1: chunks)."""
        return int(self.info.steps) if self.info is not None else 1

    @property
    def metadata(self) -> Dict[str, str]:
        """Return the served model's config name, as local model metadata would."""
        return {'vla_ros.config': self.info.model_config if self.info is not None else ''}

    @property
    def trained(self) -> bool:
        """Tell whether the server says the served weights are trained."""
        return bool(self.info is not None and self.info.trained)

    @property
    def active_providers(self):
        """Describe where the model runs: the server's backend and providers."""
        if self.info is None:
            return [f'remote:{self.options.endpoint}']
        return [f'remote:{self.options.endpoint}:{self.info.backend}:{p}'
                for p in self.info.active_providers] or [f'remote:{self.options.endpoint}']

    def encode(self, instruction: str):
        """Check an instruction (the server encodes it); ValueError when it cannot be sent."""
        from ..wire.protocol import MAX_INSTRUCTION_CHARS
        if len(instruction) > MAX_INSTRUCTION_CHARS:
            raise ValueError(f'instruction longer than {MAX_INSTRUCTION_CHARS} characters '
                             '(the remote protocol limit)')

    # -- connection -----------------------------------------------------------------------
    def _check_info(self, info):
        """Raise RemoteError when the served model is not one this node may use."""
        from ..core import model_contract as mc
        from ..wire.protocol import PROTOCOL_VERSION
        if info.protocol_version != PROTOCOL_VERSION:
            raise RemoteError(f'server speaks protocol {info.protocol_version}, this node '
                              f'{PROTOCOL_VERSION}')
        if info.action_space != self.action_space:
            raise RemoteError(f'server {self.options.endpoint} runs action space '
                              f'{info.action_space!r}, this node is configured for '
                              f'{self.action_space!r} (action_space_file)')
        # Once configured, only the model found then is accepted (a restarted server may
        # load another one: that needs a reconfigure, not a silent switch).
        wanted = self.model_id or self.options.model_id
        if wanted and info.model_id != wanted:
            raise RemoteError(f'server {self.options.endpoint} runs model {info.model_id}, '
                              f'this node expects {wanted} (remote_model_id, or the model '
                              'found in configure)')
        if ((info.image_height, info.image_width) != mc.IMAGE_SIZE
                or info.tokens_per_step != mc.NUM_ACTION_TOKENS
                or not 1 <= info.steps <= mc.MAX_CHUNK_STEPS
                or info.state_dim not in (0, mc.STATE_DIM)):
            raise RemoteError(f'server model contract not supported: image '
                              f'{info.image_width}x{info.image_height}, '
                              f'{info.steps}x{info.tokens_per_step} tokens, state_dim '
                              f'{info.state_dim}')

    def connect(self):
        """Ask the server what it runs and check it (configure); RemoteError when refused."""
        deadline = time.monotonic() + self.options.connect_timeout
        last = None
        while True:
            try:
                info = self.client.model_info(timeout=max(0.1, min(
                    self.options.deadline * 4, deadline - time.monotonic())))
                break
            except self.client._grpc.RpcError as exc:
                last = exc
                code = exc.code()
                if code in (self.client._grpc.StatusCode.UNAUTHENTICATED,
                            self.client._grpc.StatusCode.PERMISSION_DENIED):
                    raise RemoteError(f'server {self.options.endpoint} refused this robot: '
                                      f'{describe_error(exc)}') from exc
                if time.monotonic() + 0.2 >= deadline:
                    raise RemoteError(f'server {self.options.endpoint} not reachable within '
                                      f'remote_connect_timeout {self.options.connect_timeout} '
                                      f's: {describe_error(last)}') from exc
                time.sleep(0.2)
        self._check_info(info)
        self.info, self.model_id, self.instance = info, info.model_id, info.server_instance
        self._set('remote_model_id', info.model_id)
        self._set('remote_server_instance', info.server_instance)
        self._set('remote_endpoint', self.options.endpoint)
        with self._lock:
            self._up = True
        self._reconnector = threading.Thread(target=self._reconnect_loop, daemon=True,
                                             name='vla-remote-reconnect')
        self._reconnector.start()
        return info

    def close(self):
        """Stop reconnecting and close the channel."""
        self._closed.set()
        self._wake.set()
        self.client.close()

    @property
    def down_reason(self) -> str:
        """Return why frames are not being sent ('' while connected)."""
        with self._lock:
            return '' if self._up else self._down_reason

    def _mark_down(self, reason: str):
        with self._lock:
            was_up, self._up = self._up, False
            self._down_reason = reason
        if was_up:
            self._count('remote_disconnects')
            self._log('warn', f'remote policy server down, reconnecting: {reason}')
            self._wake.set()

    def _reconnect_loop(self):
        while not self._closed.is_set():
            try:
                self._reconnect_until_up()
            except Exception as exc:  # a bug here must not end reconnection for good
                self._count('remote_reconnect_errors')
                self._set('remote_last_error', repr(exc)[:200])
                time.sleep(1.0)

    def _reconnect_until_up(self):
        """Wait until marked down, then try again with exponential backoff until up."""
        self._wake.wait()
        self._wake.clear()  # before reading _up: a later _mark_down sets it again
        with self._lock:
            if self._up or self._closed.is_set():
                return
        backoff = 0.2
        while True:
            time.sleep(backoff * (0.8 + 0.4 * random.random()))
            if self._closed.is_set():
                return
            try:
                info = self.client.model_info(timeout=max(0.2, self.options.deadline * 4))
                self._check_info(info)
                break
            except Exception as exc:
                backoff = min(backoff * 2.0, self.options.reconnect_backoff_max)
                what = 'refused' if isinstance(exc, RemoteError) else 'unreachable'
                with self._lock:
                    self._down_reason = (f'remote policy server {what} ({describe_error(exc)}); '
                                         f'next try in {backoff:.1f} s')
                self._count('remote_reconnect_failures')
        self._note_instance(info.server_instance)
        self.info, self.model_id = info, info.model_id
        with self._lock:
            self._up = True
        self._count('remote_reconnects')
        self._log('info', f'remote policy server back: {info.model_id} (instance '
                          f'{info.server_instance})')

    def _note_instance(self, instance: str):
        if instance and instance != self.instance:
            if self.instance:
                self._count('remote_server_restarts')
                self._log('warn', f'remote policy server restarted (instance {self.instance} '
                                  f'→ {instance})')
            self.instance = instance
            self._set('remote_server_instance', instance)

    # -- frames ---------------------------------------------------------------------------
    def submit(self, rgb: np.ndarray, instruction: str, state, stamp_ns: int,
               frame_id: str = '') -> str:
        """
        Send one frame asynchronously; return '' when sent, else why it was not.

        Never waits for the network: the reply arrives on a gRPC thread.
        """
        from ..wire import protocol
        with self._lock:
            if not self._up:
                return self._down_reason
            if self._in_flight >= self.options.max_in_flight:
                self._count('remote_busy')
                return (f'remote_max_in_flight ({self.options.max_in_flight}) requests still '
                        'waiting for the server')
            self._in_flight += 1
            self._sequence += 1
            sequence = self._sequence
        try:
            t0 = time.perf_counter()
            frame = protocol.encode_frame(rgb, self.options.compression,
                                          self.options.jpeg_quality)
            request = protocol.pb.PredictRequest(
                robot_id=self.options.robot_id, session_id=self._session, sequence=sequence,
                frame=frame, instruction=instruction,
                state=[] if state is None else [float(v) for v in np.ravel(state)],
                source_stamp_ns=int(stamp_ns), frame_id=frame_id,
                expected_model_id=self.model_id, expected_action_space=self.action_space)
            encode_ms = (time.perf_counter() - t0) * 1e3
            sent = time.monotonic()
            future = self.client.predict_future(request, timeout=self.options.deadline)
        except Exception:
            with self._lock:
                self._in_flight -= 1
            raise
        self._set('remote_encode_ms', encode_ms)
        self._count('remote_requests')
        future.add_done_callback(lambda f: self._done(f, request, sent))
        return ''

    def _done(self, future, request, sent: float):
        with self._lock:
            self._in_flight -= 1
        grpc = self.client._grpc
        try:
            reply = future.result()
        except grpc.RpcError as exc:
            code = exc.code()
            key = {grpc.StatusCode.DEADLINE_EXCEEDED: 'remote_deadline_exceeded',
                   grpc.StatusCode.UNAVAILABLE: 'remote_unavailable',
                   grpc.StatusCode.ABORTED: 'remote_superseded',
                   grpc.StatusCode.RESOURCE_EXHAUSTED: 'remote_rate_limited',
                   grpc.StatusCode.UNAUTHENTICATED: 'remote_auth_errors',
                   grpc.StatusCode.PERMISSION_DENIED: 'remote_auth_errors',
                   grpc.StatusCode.FAILED_PRECONDITION: 'remote_identity_mismatch',
                   grpc.StatusCode.CANCELLED: 'remote_cancelled'}.get(code, 'remote_errors')
            self._count(key)
            self._set('remote_last_error', describe_error(exc)[:200])
            if key in ('remote_unavailable', 'remote_auth_errors', 'remote_identity_mismatch'):
                self._mark_down(describe_error(exc))
            return
        except Exception as exc:  # cancelled futures raise grpc.FutureCancelledError
            self._count('remote_cancelled')
            self._set('remote_last_error', repr(exc)[:200])
            return
        self._note_instance(reply.server_instance)
        tokens = np.frombuffer(reply.tokens, dtype=np.uint8)
        if (reply.action_space != self.action_space or reply.model_id != self.model_id
                or reply.steps != self.chunk_steps
                or tokens.size != reply.steps * reply.tokens_per_step
                or reply.source_stamp_ns != request.source_stamp_ns
                or reply.sequence != request.sequence):
            self._count('remote_bad_replies')
            self._set('remote_last_error', f'reply does not match its request (action space '
                      f'{reply.action_space!r}, model {reply.model_id!r}, {tokens.size} '
                      f'tokens, stamp {reply.source_stamp_ns})')
            return
        self._count('remote_replies')
        try:
            self._on_reply(tokens, reply.source_stamp_ns, reply.frame_id, reply,
                           (time.monotonic() - sent) * 1e3)
        except Exception as exc:  # the node's publisher may be gone (shutting down)
            self._count('remote_publish_errors')
            self._set('remote_last_error', repr(exc)[:200])
