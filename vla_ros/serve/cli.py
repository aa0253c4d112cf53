"""
``vla-ros serve``: run an exported policy as a gRPC policy server for remote robots.

Secure by default: the server refuses to start without a TLS certificate and key and a way
to authenticate clients (``--tokens`` file of per-robot token digests, or ``--client-ca`` for
mutual TLS, or both). ``--insecure-plaintext`` (no TLS) and ``--insecure-no-client-auth``
exist for a trusted lab network and say so loudly in the log. The model goes through the
same loading, contract and integrity checks as inference_node's (``runtime.policy``). SIGINT
or SIGTERM drains it: new requests are refused, requests in flight finish within
``--grace`` seconds. docs/remote.md has the whole story.
"""

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
from typing import Sequence

_log = logging.getLogger('vla_ros.serve')


def _parser() -> argparse.ArgumentParser:
    from ..runtime import BACKENDS
    from .server import Limits
    d = Limits()
    p = argparse.ArgumentParser(prog='vla-ros serve', description=__doc__.split('\n\n')[0])
    m = p.add_argument_group('model (as inference_node loads it)')
    m.add_argument('--model', default='', help='policy.onnx or its export folder (default: '
                   'share/vla_ros/models/rt1_nano)')
    m.add_argument('--text-encoder', default='', help='default: text_encoder.onnx beside it')
    m.add_argument('--tokenizer', default='', help='default: tokenizer.json beside it')
    m.add_argument('--action-space', default='', help='action space YAML (default: '
                   'share/vla_ros/config/action_space.yaml); must match the model')
    m.add_argument('--backend', default='onnxruntime', choices=BACKENDS)
    m.add_argument('--providers', default='CPUExecutionProvider',
                   help='comma-separated ONNX Runtime providers, in priority order')
    m.add_argument('--intra-op-threads', type=int, default=2)
    m.add_argument('--require-accelerator', action='store_true')
    m.add_argument('--engine-file', default='', help='TensorRT engine cache path')
    m.add_argument('--workers', type=int, default=1, help='model worker threads')
    m.add_argument('--max-batch', type=int, default=d.max_batch,
                   help="robots' frames run in one model call (onnxruntime and torch "
                   'backends; 1: one frame per call)')
    m.add_argument('--model-delay-ms', type=float, default=0.0,
                   help='add this to every model run, emulating a larger model (tests, '
                   'benchmarks; logged as a warning)')
    n = p.add_argument_group('network and security')
    n.add_argument('--host', default='127.0.0.1', help='address to bind (0.0.0.0: all; '
                   'default loopback only)')
    n.add_argument('--port', type=int, default=50051, help='0: any free port')
    n.add_argument('--port-file', default='', help='write the bound port here once serving')
    n.add_argument('--tls-cert', default='', help='server certificate chain (PEM)')
    n.add_argument('--tls-key', default='', help='server private key (PEM)')
    n.add_argument('--client-ca', default='', help='CA (PEM) that signs robot certificates: '
                   'mutual TLS, the robot id is the certificate common name')
    n.add_argument('--tokens', default='', help='YAML of robot_id: sha256:<hex> token '
                   'digests (see --new-token)')
    n.add_argument('--insecure-plaintext', action='store_true',
                   help='no TLS at all (trusted networks only; logged as a warning)')
    n.add_argument('--insecure-no-client-auth', action='store_true',
                   help='serve any client (trusted networks only; logged as a warning)')
    n.add_argument('--new-token', metavar='ROBOT_ID', default='',
                   help='print a new random token for ROBOT_ID and its tokens-file line, exit')
    lim = p.add_argument_group('limits')
    lim.add_argument('--max-request-bytes', type=int, default=d.max_request_bytes)
    lim.add_argument('--rate-limit', type=float, default=d.rate_limit_hz,
                     help='requests per second per robot (all RPCs)')
    lim.add_argument('--rate-burst', type=int, default=d.rate_burst)
    lim.add_argument('--max-queue-wait', type=float, default=d.max_queue_wait,
                     help='longest a request waits for the model, s')
    lim.add_argument('--max-robots', type=int, default=d.max_robots)
    lim.add_argument('--max-concurrent-rpcs', type=int, default=d.max_concurrent_rpcs)
    p.add_argument('--grace', type=float, default=5.0, help='drain time on shutdown, s')
    p.add_argument('--log-level', default='info')
    return p


def _new_token(robot: str) -> int:
    from ..wire.protocol import ROBOT_ID_PATTERN, token_digest
    if not ROBOT_ID_PATTERN.match(robot):
        print('robot id must be 1-64 of [A-Za-z0-9_.-]', file=sys.stderr)
        return 2
    token = secrets.token_urlsafe(32)
    print(f'token for {robot} (store it on the robot, mode 600, and point its '
          f'remote_token_file at it):\n{token}\n')
    print(f"line for the server's --tokens file:\n{robot}: {token_digest(token)}")
    return 0


def build(args):
    """Return the server (model loaded, not yet started) for parsed arguments."""
    from ..core.action_space import ActionSpace
    from ..paths import default_action_space_file, default_model_dir
    from ..runtime import BackendOptions
    from ..runtime.policy import Policy, PolicyFiles
    from .server import Authenticator, Limits, load_tokens, PolicyServer, PolicyService, TlsFiles

    model = args.model or default_model_dir()
    if os.path.isdir(model):
        model = os.path.join(model, 'policy.onnx')
    if not os.path.isfile(model):
        raise ValueError(f'model {model!r} does not exist; run `make models` or '
                         '`vla-ros export`')
    tls = None
    if args.insecure_plaintext:
        _log.warning('INSECURE: --insecure-plaintext: frames, instructions, tokens and '
                     'credentials cross the network unencrypted')
    else:
        if not (args.tls_cert and args.tls_key):
            raise ValueError('TLS needs --tls-cert and --tls-key (or --insecure-plaintext on '
                             'a trusted network)')
        tls = TlsFiles(args.tls_cert, args.tls_key, args.client_ca)
    if args.client_ca and tls is None:
        raise ValueError('--client-ca (mutual TLS) needs TLS, not --insecure-plaintext')
    auth = Authenticator(tokens=load_tokens(args.tokens) if args.tokens else {},
                         mtls=bool(args.client_ca))
    if not auth.enabled:
        if not args.insecure_no_client_auth:
            raise ValueError('client authentication needs --tokens FILE or --client-ca PEM '
                             '(or --insecure-no-client-auth on a trusted network)')
        _log.warning('INSECURE: --insecure-no-client-auth: any client that reaches the port '
                     'is served and may claim any robot id')
    limits = Limits(max_request_bytes=args.max_request_bytes, rate_limit_hz=args.rate_limit,
                    rate_burst=args.rate_burst, max_queue_wait=args.max_queue_wait,
                    max_robots=args.max_robots, max_concurrent_rpcs=args.max_concurrent_rpcs,
                    max_batch=args.max_batch)
    if args.max_batch < 1:
        raise ValueError(f'--max-batch must be >= 1, found {args.max_batch}')
    if args.max_batch > 1 and args.backend not in ('onnxruntime', 'torch'):
        raise ValueError(f'--max-batch {args.max_batch}: the {args.backend} backend runs one '
                         'frame per call (its engine has a batch-1 profile)')
    space = ActionSpace.from_yaml(args.action_space or default_action_space_file())
    options = BackendOptions(
        model_file_path=model, providers=tuple(p for p in args.providers.split(',') if p),
        intra_op_threads=args.intra_op_threads, require_accelerator=args.require_accelerator,
        engine_file_path=args.engine_file)
    # A chunked model is served whole: each reply carries its k steps, and the robot's
    # inference_node executes them as it would a local chunked model's (chunk_execute).
    policy = Policy(PolicyFiles.from_paths(model, args.text_encoder, args.tokenizer), space,
                    args.backend, options, allow_chunks=True)
    if args.model_delay_ms > 0:
        _log.warning(f'--model-delay-ms: every model run is {args.model_delay_ms:g} ms slower')
    service = PolicyService(policy, args.backend, auth, limits, workers=args.workers,
                            model_delay_s=args.model_delay_ms * 1e-3)
    host = f'[{args.host}]' if ':' in args.host else args.host
    return PolicyServer(service, f'{host}:{args.port}', tls)


def main(argv: Sequence[str] = None) -> int:
    """Run the server until SIGINT/SIGTERM; exit 2 on bad configuration."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format='[%(levelname)s] [vla-ros serve]: %(message)s')
    if args.new_token:
        return _new_token(args.new_token)
    from ..core.action_space import ActionSpaceError
    from ..core.model_contract import ContractError
    from ..runtime import BackendError
    try:
        server = build(args)
    except (ValueError, OSError, ActionSpaceError, ContractError, BackendError) as exc:
        _log.critical(f'bad configuration: {exc}')
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    service = server.service
    info = service.info
    if args.port_file:
        tmp = args.port_file + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as stream:
            stream.write(f'{server.port}\n')
        os.replace(tmp, args.port_file)
    security = ('plaintext' if args.insecure_plaintext else
                'TLS' + (' + mTLS' if args.client_ca else ''))
    security += (' + tokens' if args.tokens else '') + (
        ', NO client auth' if not service.auth.enabled else '')
    _log.info(f'serving {info.model_id} (action space {info.action_space}, state_dim '
              f'{info.state_dim}, backend {info.backend} on {",".join(info.active_providers)}, '
              f'files verified: {info.model_files_verified}) on {args.host}:{server.port}, '
              f'{security}, instance {info.server_instance}')
    while not stop.wait(30.0):
        _log.info(f'counters: {_counters(service)}')
    _log.info(f'shutting down: draining for up to {args.grace:g} s')
    server.stop(args.grace)
    _log.info(f'stopped; counters: {_counters(service)}')
    return 0


def _counters(service) -> str:
    from .server import counters_line
    return counters_line(service)
