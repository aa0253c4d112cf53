"""
The remote policy server (``vla-ros serve``) as a real process on 127.0.0.1.

Served tokens equal the local runtime's for the same frames (lossless encodings); clients
without valid credentials get nothing; malformed, fuzzed, oversized and flooding requests
get an error status and the server keeps serving; one pending request per robot (newest
frame wins); deadlines; graceful shutdown. Certificates and tokens are made by the test
(``serve_support``); nothing secret is committed.
"""

import io
import os
import re
import threading
import time

import grpc
from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
import pytest
from serve_support import new_token, Pki, ServerProcess
from vla_ros.runtime.remote import RemoteClient, RemoteOptions
from vla_ros.wire import protocol
from vla_ros.wire.protocol import pb

pytest.importorskip('cryptography')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = grpc.StatusCode


@pytest.fixture(scope='module')
def creds(tmp_path_factory):
    """Make a CA, the server's certificate, robot certificates, tokens, and a rogue CA."""
    folder = str(tmp_path_factory.mktemp('pki'))
    pki = Pki(folder)
    rogue = Pki(os.path.join(folder, 'rogue'), 'rogue-ca')
    out = {'ca': pki.ca_file, 'rogue_ca': rogue.ca_file, 'folder': folder}
    out['server_cert'], out['server_key'] = pki.issue('localhost', server=True)
    for robot in ('robot1', 'robot2', 'robot3', 'robot4'):
        out[f'{robot}_cert'], out[f'{robot}_key'] = pki.issue(robot)
        out[f'{robot}_token'], line = new_token(folder, robot)
        out.setdefault('lines', []).append(line)
    out['rogue_cert'], out['rogue_key'] = rogue.issue('robot1')
    out['tokens'] = os.path.join(folder, 'tokens.yaml')
    with open(out['tokens'], 'w', encoding='utf-8') as stream:
        stream.write('\n'.join(out['lines']) + '\n')
    other, _ = new_token(os.path.join(folder, 'rogue'), 'robot1')
    out['wrong_token'] = other
    return out


def _tls_args(creds, mtls: bool = False):
    args = ['--tls-cert', creds['server_cert'], '--tls-key', creds['server_key'],
            '--tokens', creds['tokens']]
    return args + (['--client-ca', creds['ca']] if mtls else [])


def _client(server, creds, robot='robot1', cert=True, token='', ca='', insecure=False):
    cert_file = key_file = ''
    if cert:
        prefix = cert if isinstance(cert, str) else robot
        cert_file, key_file = creds[f'{prefix}_cert'], creds[f'{prefix}_key']
    return RemoteClient(RemoteOptions(
        endpoint=server.endpoint, robot_id=robot, ca_file='' if insecure else (ca or creds['ca']),
        cert_file=cert_file, key_file=key_file,
        token_file=creds[f'{robot}_token'] if token == '' else token, insecure=insecure))


@pytest.fixture(scope='module')
def nano_server(creds, tmp_path_factory):
    """Serve the shipped policy behind TLS, mutual TLS and tokens (generous rate limit)."""
    server = ServerProcess(str(tmp_path_factory.mktemp('nano')), _tls_args(creds, mtls=True)
                           + ['--rate-limit', '1000', '--rate-burst', '1000'], name='nano')
    server.start()
    yield server
    code = server.terminate()
    print(server.log())
    assert code == 0


@pytest.fixture(scope='module')
def known_server(creds, test_model_dir, tmp_path_factory):
    """Serve the known-function test model, TLS + tokens, generous rate limit (fuzzing)."""
    from conftest import absolute_action_space_file
    server = ServerProcess(str(tmp_path_factory.mktemp('known')), _tls_args(creds) + [
        '--model', test_model_dir, '--action-space', absolute_action_space_file(),
        '--rate-limit', '1000', '--rate-burst', '1000'], name='known')
    server.start()
    yield server
    code = server.terminate()
    print(server.log())
    assert code == 0


def _slow_server(creds, test_model_dir, folder, name='slow'):
    """Return a server of the known model made 300 ms slower, with rate limits."""
    from conftest import absolute_action_space_file
    return ServerProcess(folder, _tls_args(creds) + [
        '--model', test_model_dir, '--action-space', absolute_action_space_file(),
        '--model-delay-ms', '300', '--rate-limit', '20', '--rate-burst', '5'], name=name)


@pytest.fixture(scope='module')
def slow_server(creds, test_model_dir, tmp_path_factory):
    server = _slow_server(creds, test_model_dir, str(tmp_path_factory.mktemp('slow')))
    server.start()
    yield server
    server.terminate()
    print(server.log())


def _request(rgb, instruction='pick up the red block', state=(), compression='raw',
             stamp=1, robot='robot1', quality=90, sequence=0):
    frame = protocol.encode_frame(rgb, compression, quality)
    return pb.PredictRequest(robot_id=robot, frame=frame,
                             instruction=instruction, state=list(state),
                             source_stamp_ns=stamp, frame_id='camera', sequence=sequence)


def _code(call):
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return CODE.OK


# -- the protocol ----------------------------------------------------------------------------
def test_committed_message_code_is_what_the_proto_generates(tmp_path):
    pytest.importorskip('grpc_tools')
    from vla_ros.tools import gen_proto
    fresh = gen_proto.generate(ROOT, str(tmp_path))
    with open(fresh, encoding='utf-8') as a, \
            open(os.path.join(ROOT, gen_proto.GENERATED), encoding='utf-8') as b:
        assert a.read() == b.read(), 'run `make proto` and commit the result'


def test_method_table_matches_the_service_in_the_proto():
    service = pb.DESCRIPTOR.services_by_name['PolicyService']
    assert service.full_name == protocol.SERVICE
    found = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert found == {name: (req.DESCRIPTOR.full_name, rep.DESCRIPTOR.full_name)
                     for name, (req, rep) in protocol.METHODS.items()}


def test_frame_codecs_are_lossless_and_check_sizes():
    rgb = np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    for compression in ('raw', 'png'):
        frame = protocol.encode_frame(rgb, compression)
        assert np.array_equal(protocol.decode_frame(frame, (300, 300)), rgb)
    jpeg = protocol.decode_frame(protocol.encode_frame(rgb, 'jpeg', 95), (300, 300))
    assert jpeg.shape == rgb.shape and not np.array_equal(jpeg, rgb)
    frame = protocol.encode_frame(rgb[:200], 'png')
    with pytest.raises(protocol.FrameError, match='300x300'):
        protocol.decode_frame(frame, (300, 300))
    frame.height = 300  # lies about its size: checked before decoding
    with pytest.raises(protocol.FrameError, match='300x200'):
        protocol.decode_frame(frame, (300, 300))


# -- parity ----------------------------------------------------------------------------------
def _frames(n: int):
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        if i % 3 == 0:  # smooth, camera-like images
            y, x = np.mgrid[0:300, 0:300]
            base = rng.integers(0, 256, 3)
            img = (base + 0.3 * x[..., None] * rng.uniform(-1, 1, 3)
                   + 0.3 * y[..., None] * rng.uniform(-1, 1, 3))
            out.append(np.clip(img, 0, 255).astype(np.uint8))
        else:
            out.append(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    return out


def _states(n: int):
    rng = np.random.default_rng(4)
    states = rng.uniform(-1.0, 1.0, (n, 11)).astype(np.float32)
    states[:, 7:10] *= 0.3
    states[:, 10] = rng.integers(0, 2, n)
    return states


def test_served_tokens_equal_local_tokens(nano_server, creds, shipped_action_space):
    from vla_ros.paths import default_model_dir
    from vla_ros.runtime.policy import Policy, PolicyFiles
    local = Policy(PolicyFiles.from_paths(os.path.join(default_model_dir(), 'policy.onnx')),
                   shipped_action_space)
    client = _client(nano_server, creds)
    info = client.model_info(10)
    assert info.action_space == shipped_action_space.identity
    assert info.model_files_verified and info.state_dim == 11
    instructions = ['pick up the red block', 'push the blue block left',
                    'drive to the marker']
    frames, states = _frames(9), _states(9)
    agree = {'jpeg90': 0, 'jpeg75': 0}
    for i, (rgb, state) in enumerate(zip(frames, states)):
        text = instructions[i % len(instructions)]
        expected = local.predict(rgb, text, state).tokens
        for compression in ('raw', 'png'):
            stamp = 1_700_000_000_000_000_000 + i
            reply = client.predict(_request(rgb, text, state, compression, stamp), 20)
            got = np.frombuffer(reply.tokens, np.uint8)
            assert np.array_equal(got, expected), (i, compression, got, expected)
            assert reply.source_stamp_ns == stamp and reply.frame_id == 'camera'
            assert reply.action_space == shipped_action_space.identity
            assert reply.model_id == info.model_id and reply.server_instance
            assert reply.timing.total_ms >= reply.timing.model_ms > 0
        for quality in (90, 75):
            reply = client.predict(_request(rgb, text, state, 'jpeg', 1, quality=quality), 20)
            agree[f'jpeg{quality}'] += int(np.array_equal(
                np.frombuffer(reply.tokens, np.uint8), expected))
    print(f'JPEG frames whose 11 tokens all equal the lossless ones, of {len(frames)}: '
          f'{agree}')
    client.close()


# -- authentication -------------------------------------------------------------------------
def test_clients_without_valid_credentials_get_nothing(nano_server, creds):
    rgb = np.zeros((300, 300, 3), np.uint8)
    request = _request(rgb, state=[0.0] * 11)
    cases = {
        'plaintext to a TLS port': {'insecure': True, 'cert': False},
        'no client certificate': {'cert': False},
        'certificate of an untrusted CA': {'cert': 'rogue'},
        'server not trusted (other CA)': {'ca': creds['rogue_ca']},
        'no token': {'token': None},
        'wrong token': {'token': creds['wrong_token']},
        "another robot's token": {'token': creds['robot2_token']},
    }
    expected = {'plaintext to a TLS port': {CODE.UNAVAILABLE},
                'no client certificate': {CODE.UNAVAILABLE},
                'certificate of an untrusted CA': {CODE.UNAVAILABLE},
                'server not trusted (other CA)': {CODE.UNAVAILABLE},
                'no token': {CODE.UNAUTHENTICATED},
                'wrong token': {CODE.UNAUTHENTICATED},
                "another robot's token": {CODE.PERMISSION_DENIED}}
    for name, kwargs in cases.items():
        if kwargs.get('token', '') is None:
            kwargs['token'] = ''
            client = _client(nano_server, creds, **kwargs)
            client.metadata = ()
        else:
            client = _client(nano_server, creds, **kwargs)
        for call in (lambda: client.model_info(5), lambda: client.health(5),
                     lambda: client.predict(request, 5)):
            assert _code(call) in expected[name], name
        client.close()
    # Authenticated as robot1, asking as robot2.
    client = _client(nano_server, creds)
    claim = _request(rgb, state=[0.0] * 11, robot='robot2')
    assert _code(lambda: client.predict(claim, 5)) == CODE.PERMISSION_DENIED
    assert _code(lambda: client.predict(request, 10)) == CODE.OK
    client.close()


def test_the_server_refuses_to_start_insecure_unless_told(creds, test_model_dir, tmp_path):
    from conftest import absolute_action_space_file
    model = ['--model', test_model_dir, '--action-space', absolute_action_space_file()]
    no_tls = ServerProcess(str(tmp_path), model + ['--tokens', creds['tokens']], name='a')
    with pytest.raises(RuntimeError, match='exited 2'):
        no_tls.start()
    assert 'TLS needs --tls-cert' in no_tls.log()
    no_auth = ServerProcess(str(tmp_path), model + ['--tls-cert', creds['server_cert'],
                                                    '--tls-key', creds['server_key']],
                            name='b')
    with pytest.raises(RuntimeError, match='exited 2'):
        no_auth.start()
    assert 'client authentication needs' in no_auth.log()
    lab = ServerProcess(str(tmp_path), model + ['--insecure-plaintext',
                                                '--insecure-no-client-auth'], name='c')
    lab.start()
    try:
        client = RemoteClient(RemoteOptions(endpoint=lab.endpoint, robot_id='lab',
                                            insecure=True))
        assert client.health(5).status == pb.HealthReply.SERVING
        client.close()
    finally:
        assert lab.terminate() == 0
    assert 'INSECURE: --insecure-plaintext' in lab.log()
    assert 'INSECURE: --insecure-no-client-auth' in lab.log()


# -- malformed, fuzzed, oversized ------------------------------------------------------------
ERRORS = {CODE.INVALID_ARGUMENT, CODE.INTERNAL, CODE.FAILED_PRECONDITION,
          CODE.RESOURCE_EXHAUSTED, CODE.PERMISSION_DENIED, CODE.UNAUTHENTICATED}


def _raw_predict(client):
    """Predict with the request as raw bytes (what a broken or hostile client can send)."""
    return client.channel.unary_unary(protocol.method_path('Predict'),
                                      request_serializer=lambda b: b,
                                      response_deserializer=pb.PredictReply.FromString)


def _png(size, mode='RGB'):
    from PIL import Image
    out = io.BytesIO()
    Image.new(mode, size).save(out, format='PNG')
    return out.getvalue()


def _expected_known(test_model_dir, rgb, text):
    from vla_ros.runtime.text_encoder import TextEncoder
    from vla_ros.testing.known_model import expected_tokens
    emb, mask = TextEncoder(f'{test_model_dir}/text_encoder.onnx').encode(text)
    return expected_tokens(rgb, emb, mask)


def test_malformed_requests_get_errors_and_the_server_keeps_serving(known_server, creds,
                                                                    test_model_dir):
    client = _client(known_server, creds, cert=False)
    raw = _raw_predict(client)
    rng = np.random.default_rng(5)
    codes = set()
    for n in range(150):
        blob = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        codes.add(_code(lambda: raw(blob, timeout=5, metadata=client.metadata)))
    assert codes <= ERRORS, codes
    rgb = np.full((300, 300, 3), 90, np.uint8)
    good = _request(rgb)
    bad = {
        'empty': pb.PredictRequest(),
        'no frame': pb.PredictRequest(robot_id='robot1', instruction='pick up'),
        'short raw': _request(rgb[:, :299]),
        'raw size lie': pb.PredictRequest(robot_id='robot1', instruction='up', frame=pb.Frame(
            encoding=pb.Frame.RAW_RGB8, width=300, height=300, data=b'\0' * 100)),
        'png labelled jpeg': pb.PredictRequest(robot_id='robot1', instruction='up',
                                               frame=pb.Frame(encoding=pb.Frame.JPEG, width=300,
                                                              height=300, data=_png((300, 300)))),
        'truncated png': pb.PredictRequest(robot_id='robot1', instruction='up', frame=pb.Frame(
            encoding=pb.Frame.PNG, width=300, height=300, data=_png((300, 300))[:60])),
        'png bomb': pb.PredictRequest(robot_id='robot1', instruction='up', frame=pb.Frame(
            encoding=pb.Frame.PNG, width=300, height=300, data=_png((20000, 20000), '1'))),
        'unknown encoding': pb.PredictRequest(robot_id='robot1', instruction='up',
                                              frame=pb.Frame(encoding=7, width=300, height=300,
                                                             data=b'x')),
        'state for a stateless model': _request(rgb, state=[0.0] * 11),
        'long instruction': _request(rgb, 'up ' * 1000),
        'negative stamp': _request(rgb, stamp=-5),
        'other model expected': pb.PredictRequest(
            robot_id='robot1', instruction='up', frame=good.frame, expected_model_id='x@y'),
    }
    for name, request in bad.items():
        code = _code(lambda: client.predict(request, 5))
        assert code in ERRORS, (name, code)
    # Over --max-request-bytes (4 MiB by default).
    huge = pb.PredictRequest(robot_id='robot1', instruction='up', frame=pb.Frame(
        encoding=pb.Frame.PNG, width=300, height=300, data=b'\0' * (5 << 20)))
    assert _code(lambda: client.predict(huge, 10)) == CODE.RESOURCE_EXHAUSTED
    assert known_server.alive()
    assert client.health(5).status == pb.HealthReply.SERVING
    reply = client.predict(good, 10)
    assert np.array_equal(np.frombuffer(reply.tokens, np.uint8),
                          _expected_known(test_model_dir, rgb, 'pick up the red block'))
    client.close()


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(robot=st.sampled_from(['robot1', '', 'robot2', 'x' * 70, 'robot1\n']),
       encoding=st.integers(0, 5), width=st.sampled_from([0, 1, 300, 301, 2 ** 31]),
       height=st.sampled_from([0, 300, 65535]), data=st.binary(max_size=4000),
       instruction=st.text(max_size=50), state=st.lists(
           st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=13),
       stamp=st.integers(-2 ** 63, 2 ** 63 - 1))
def test_fuzzed_requests_never_crash_the_server(known_server, creds, robot, encoding, width,
                                                height, data, instruction, state, stamp):
    client = _fuzz_client(known_server, creds)
    request = pb.PredictRequest(robot_id=robot, instruction=instruction, state=state,
                                source_stamp_ns=stamp, frame=pb.Frame(
                                    encoding=encoding, width=width, height=height, data=data))
    code = _code(lambda: client.predict(request, 5))
    assert code in ERRORS, code
    assert known_server.alive()


_FUZZ_CLIENT = {}


def _fuzz_client(server, creds):
    key = server.endpoint
    if key not in _FUZZ_CLIENT:
        _FUZZ_CLIENT[key] = _client(server, creds, cert=False)
    return _FUZZ_CLIENT[key]


# -- queues, deadlines, limits, shutdown -----------------------------------------------------
def test_newest_frame_wins_per_robot_and_robots_take_turns(slow_server, creds):
    one = _client(slow_server, creds, cert=False)
    two = _client(slow_server, creds, robot='robot2', cert=False)
    rgb = np.full((300, 300, 3), 50, np.uint8)
    done = {}
    lock = threading.Lock()

    def record(name):
        def callback(future):
            with lock:
                done[name] = (time.monotonic(), _code(future.result))
        return callback

    calls = []
    for i in range(4):
        f = one.predict_future(_request(rgb, stamp=i + 1, sequence=i), timeout=5)
        f.add_done_callback(record(f'one{i}'))
        calls.append(f)
        time.sleep(0.04)
        if i == 1:
            g = two.predict_future(_request(rgb, robot='robot2', stamp=9), timeout=5)
            g.add_done_callback(record('two'))
            calls.append(g)
    for f in calls:
        try:
            f.result()
        except grpc.RpcError:
            pass
    time.sleep(0.05)
    codes = {k: v[1] for k, v in done.items()}
    assert codes == {'one0': CODE.OK, 'one1': CODE.ABORTED, 'one2': CODE.ABORTED,
                     'one3': CODE.OK, 'two': CODE.OK}, codes
    # robot2's frame came before robot1's newest: it ran first.
    assert done['two'][0] < done['one3'][0]
    one.close()
    two.close()


def test_robots_frames_batched_in_one_call_each_get_their_own_tokens(creds, test_model_dir,
                                                                     tmp_path):
    """--max-batch 4: frames of four robots that wait together run as one model call."""
    from conftest import absolute_action_space_file
    server = ServerProcess(str(tmp_path), _tls_args(creds) + [
        '--model', test_model_dir, '--action-space', absolute_action_space_file(),
        '--model-delay-ms', '300', '--max-batch', '4'], name='batched').start()
    robots = ['robot1', 'robot2', 'robot3', 'robot4']
    clients = {r: _client(server, creds, robot=r, cert=False) for r in robots}
    texts = {'robot1': 'pick up the red block', 'robot2': 'open the gripper',
             'robot3': 'push the blue block left', 'robot4': 'drive to the yellow marker'}
    try:
        for round_ in range(3):
            futures = {}
            for k, robot in enumerate(robots):
                rgb = np.full((300, 300, 3), 30 + 50 * k + 7 * round_, np.uint8)
                rgb[:, :150, 1] = 200 - 40 * k
                futures[robot] = (rgb, clients[robot].predict_future(
                    _request(rgb, texts[robot], robot=robot, stamp=100 * round_ + k + 1),
                    timeout=20))
            for robot, (rgb, future) in futures.items():
                reply = future.result()
                expected = _expected_known(test_model_dir, rgb, texts[robot])
                got = np.frombuffer(reply.tokens, np.uint8)
                assert np.array_equal(got, expected), (robot, got, expected)
                assert reply.source_stamp_ns % 100 == robots.index(robot) + 1
    finally:
        for client in clients.values():
            client.close()
        server.terminate()
    log = server.log()
    batched = re.search(r'batched_calls[=: ]+(\d+)', log)
    assert batched and int(batched.group(1)) >= 2, log[-2000:]


def test_deadlines_and_rate_limits_answer_with_an_error(slow_server, creds):
    client = _client(slow_server, creds, cert=False)
    rgb = np.full((300, 300, 3), 50, np.uint8)
    time.sleep(0.5)  # let the bucket refill
    assert _code(lambda: client.predict(_request(rgb), 0.1)) == CODE.DEADLINE_EXCEEDED
    codes = [_code(lambda: client.health(2)) for _ in range(40)]
    assert CODE.RESOURCE_EXHAUSTED in codes and codes[0] == CODE.OK
    time.sleep(0.6)  # 20/s refills
    assert _code(lambda: client.predict(_request(rgb), 5)) == CODE.OK
    client.close()


def test_sigterm_drains_in_flight_requests_then_exits_cleanly(creds, test_model_dir,
                                                              tmp_path):
    server = _slow_server(creds, test_model_dir, str(tmp_path), name='drain').start()
    client = _client(server, creds, cert=False)
    rgb = np.full((300, 300, 3), 50, np.uint8)
    try:
        assert _code(lambda: client.predict(_request(rgb), 5)) == CODE.OK  # warm
        future = client.predict_future(_request(rgb, stamp=7), timeout=5)
        time.sleep(0.1)
        code = []
        stopper = threading.Thread(target=lambda: code.append(server.terminate()))
        stopper.start()
        assert future.result().source_stamp_ns == 7  # finished while draining
        stopper.join(30)
        assert code == [0]
        assert _code(lambda: client.predict(_request(rgb), 2)) == CODE.UNAVAILABLE
    finally:
        server.kill()
        client.close()
    assert 'shutting down: draining' in server.log() and 'stopped; counters' in server.log()


def test_a_port_in_use_is_a_configuration_error(known_server, creds, test_model_dir, tmp_path):
    from conftest import absolute_action_space_file
    second = ServerProcess(str(tmp_path), _tls_args(creds) + [
        '--model', test_model_dir, '--action-space', absolute_action_space_file()],
        port=known_server.port, name='second')
    with pytest.raises(RuntimeError, match='exited 2'):
        second.start()
    assert f'cannot listen on 127.0.0.1:{known_server.port}' in second.log()
    assert known_server.alive()
