"""
``vla-ros bench remote``: what serving the policy remotely adds, on loopback.

A ``vla-ros serve`` process (TLS with throw-away certificates and a per-robot token, as a
robot would talk to it; ``--plaintext`` without) serves the policy; this process runs the
same policy locally on the same 300x300 frames and states. Per frame encoding (raw and PNG,
lossless; JPEG at several qualities) it prints:

* the added latency, p50 / p99: client encode + RPC round trip (transport, server decode,
  queue) minus the server's own model time — what moving the model off the robot costs
  besides the model itself;
* the local model time for comparison;
* token agreement with the local (lossless) tokens: frames whose 11 tokens are all equal,
  tokens equal, and the largest token difference;
* with ``--batch-sizes``: what the server's ``--max-batch`` can gain, the local model's
  frames per second when that many robots' frames run in one call, and whether the batched
  tokens equal the batch-1 tokens.

Frames are synthetic camera-like scenes (gradients, blocks, sensor noise), not the robot's;
a figure printer, not a test.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence

import numpy as np


def scene_frames(n: int, seed: int = 0) -> List[np.ndarray]:
    """Return ``n`` camera-like rgb8 300x300 frames: a lit table, blocks, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:300, 0:300].astype(np.float32)
    frames = []
    for _ in range(n):
        base = rng.uniform(60, 200, 3)
        img = base + (x[..., None] * rng.uniform(-0.15, 0.15, 3)
                      + y[..., None] * rng.uniform(-0.15, 0.15, 3))
        for _ in range(int(rng.integers(1, 4))):
            cx, cy, size = rng.integers(40, 260), rng.integers(120, 260), rng.integers(15, 45)
            img[cy - size // 2:cy + size // 2, cx - size // 2:cx + size // 2] = \
                rng.uniform(0, 255, 3)
        img += rng.normal(0, 3.0, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def sample_states(n: int, dim: int, seed: int = 1) -> List[np.ndarray]:
    """Return ``n`` plausible previous-target states (arm rad, base, gripper 0/1)."""
    if not dim:
        return [None] * n
    rng = np.random.default_rng(seed)
    out = rng.uniform(-0.8, 0.8, (n, dim)).astype(np.float32)
    out[:, 7:10] *= 0.3
    out[:, 10] = rng.integers(0, 2, n)
    return list(out)


def _pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float('nan')


def _start_server(args, folder: str):
    from ..serve.devcerts import Pki
    from ..wire.protocol import token_digest
    port_file = os.path.join(folder, 'port')
    cmd = [sys.executable, '-m', 'vla_ros.cli', 'serve', '--host', '127.0.0.1', '--port', '0',
           '--port-file', port_file, '--rate-limit', '100000', '--rate-burst', '100000',
           '--intra-op-threads', str(args.threads)]
    if args.model:
        cmd += ['--model', args.model]
    if args.action_space:
        cmd += ['--action-space', args.action_space]
    options = {'robot_id': 'bench'}
    if args.plaintext:
        cmd += ['--insecure-plaintext', '--insecure-no-client-auth']
        options['insecure'] = True
    else:
        pki = Pki(folder, 'bench-ca')
        cert, key = pki.issue('localhost', server=True)
        token = 'bench-' + os.urandom(16).hex()
        with open(os.path.join(folder, 'tokens.yaml'), 'w', encoding='utf-8') as stream:
            stream.write(f'bench: {token_digest(token)}\n')
        with open(os.path.join(folder, 'bench.token'), 'w', encoding='utf-8') as stream:
            stream.write(token)
        cmd += ['--tls-cert', cert, '--tls-key', key, '--tokens',
                os.path.join(folder, 'tokens.yaml')]
        options.update(ca_file=pki.ca_file, token_file=os.path.join(folder, 'bench.token'))
    log = open(os.path.join(folder, 'server.log'), 'wb')
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 120
    while not os.path.exists(port_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            with open(os.path.join(folder, 'server.log'), encoding='utf-8') as stream:
                raise RuntimeError(f'vla-ros serve did not start:\n{stream.read()[-3000:]}')
        time.sleep(0.05)
    with open(port_file, encoding='utf-8') as stream:
        options['endpoint'] = f'127.0.0.1:{int(stream.read())}'
    return proc, options


def batch_throughput(policy, frames, states, text: str, sizes: str, expected,
                     repeats: int) -> Dict[int, Dict[str, float]]:
    """Frames per second of ``policy.predict_batch`` at each batch size; token agreement."""
    out = {}
    for size in [int(s) for s in sizes.split(',') if s.strip()]:
        chunks = [(frames[i:i + size], states[i:i + size], expected[i:i + size])
                  for i in range(0, len(frames) - size + 1, size)]
        policy.predict_batch(chunks[0][0], [text] * size, chunks[0][1])  # warm-up
        equal = count = 0
        t0 = time.perf_counter()
        for _ in range(max(1, repeats)):
            for imgs, sts, exp in chunks:
                preds = policy.predict_batch(imgs, [text] * size, sts)
                equal += sum(int(np.array_equal(p.tokens, e)) for p, e in zip(preds, exp))
                count += size
        seconds = time.perf_counter() - t0
        out[size] = {'frames_per_s': count / seconds, 'frames_equal': equal / count}
    return out


def run(args) -> Dict[str, Dict[str, float]]:
    """Measure; return setting → figures."""
    from ..core.action_space import ActionSpace
    from ..paths import default_action_space_file, default_model_dir
    from ..runtime import BackendOptions
    from ..runtime.policy import Policy, PolicyFiles
    from ..runtime.remote import RemoteClient, RemoteOptions
    from ..wire import protocol

    model = args.model or default_model_dir()
    model = os.path.join(model, 'policy.onnx') if os.path.isdir(model) else model
    space = ActionSpace.from_yaml(args.action_space or default_action_space_file())
    local = Policy(PolicyFiles.from_paths(model), space, 'onnxruntime',
                   BackendOptions(model_file_path=model, intra_op_threads=args.threads))
    text = args.instruction
    frames = scene_frames(args.frames)
    inputs = sample_states(args.frames, local.state_dim)
    local.predict(frames[0], text, inputs[0])
    local_ms, expected = [], []
    for rgb, state in zip(frames, inputs):
        pred = local.predict(rgb, text, state)
        local_ms.append(pred.model_ms)
        expected.append(pred.tokens)
    results = {'local model': {'p50': _pct(local_ms, 50), 'p99': _pct(local_ms, 99)}}
    results['batches'] = batch_throughput(local, frames, inputs, text, args.batch_sizes,
                                          expected, args.repeats)
    with tempfile.TemporaryDirectory(prefix='vla_bench_remote_') as folder:
        proc, options = _start_server(args, folder)
        client = RemoteClient(RemoteOptions(**options))
        try:
            info = client.model_info(10)
            security = 'plaintext' if args.plaintext else 'TLS + token'
            print(f'server {options["endpoint"]} ({security}): {info.model_id}, {args.frames} '
                  f'frames x {args.repeats}, instruction {text!r}')
            for setting in args.settings.split(','):
                compression, quality = (('jpeg', int(setting[4:])) if setting.startswith('jpeg')
                                        else (setting, 90))
                added, equal_frames, equal_tokens, worst = [], 0, 0, 0
                for rep in range(args.repeats + 1):
                    for i, (rgb, state) in enumerate(zip(frames, inputs)):
                        t0 = time.perf_counter()
                        frame = protocol.encode_frame(rgb, compression, quality)
                        request = protocol.pb.PredictRequest(
                            robot_id='bench', frame=frame, instruction=text,
                            state=[] if state is None else [float(v) for v in state],
                            source_stamp_ns=i + 1)
                        reply = client.predict(request, timeout=10)
                        total_ms = (time.perf_counter() - t0) * 1e3
                        if rep == 0:  # the first pass warms up and checks agreement
                            tokens = np.frombuffer(reply.tokens, np.uint8)
                            diff = np.abs(tokens.astype(int) - expected[i].astype(int))
                            equal_frames += int(not diff.any())
                            equal_tokens += int((diff == 0).sum())
                            worst = max(worst, int(diff.max()))
                            continue
                        added.append(total_ms - reply.timing.model_ms)
                results[setting] = {
                    'p50': _pct(added, 50), 'p99': _pct(added, 99),
                    'bytes': len(frame.data),
                    'frames_equal': equal_frames / len(frames),
                    'tokens_equal': equal_tokens / (len(frames) * len(expected[0])),
                    'max_token_diff': worst}
        finally:
            client.close()
            proc.terminate()
            proc.wait(30)
    return results


def main(argv: Sequence[str] = None) -> int:
    """Print the figures."""
    p = argparse.ArgumentParser(prog='vla-ros bench remote', description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='', help='policy.onnx or its folder (default: shipped)')
    p.add_argument('--action-space', default='')
    p.add_argument('--frames', type=int, default=40)
    p.add_argument('--repeats', type=int, default=5, help='timed passes over the frames')
    p.add_argument('--settings', default='raw,png,jpeg95,jpeg90,jpeg75,jpeg50')
    p.add_argument('--instruction', default='pick up the red block')
    p.add_argument('--threads', type=int, default=2, help='intra-op threads, both sides')
    p.add_argument('--plaintext', action='store_true', help='no TLS, no token')
    p.add_argument('--batch-sizes', default='1,2,4,8',
                   help='local model throughput at these batch sizes (serve --max-batch)')
    args = p.parse_args(argv)
    results = run(args)
    local = results.pop('local model')
    batches = results.pop('batches')
    print(f'local model run: p50 {local["p50"]:.2f} ms, p99 {local["p99"]:.2f} ms '
          f'(batch 1, {args.threads} threads)')
    one = batches.get(1, {}).get('frames_per_s')
    for size, b in batches.items():
        gain = f', {b["frames_per_s"] / one:.2f}x batch 1' if one else ''
        print(f'batch {size}: {b["frames_per_s"]:.1f} frames/s{gain}; tokens equal to batch 1 '
              f'on {100 * b["frames_equal"]:.1f}% of frames')
    print(f'{"frame":<8} {"bytes":>8} {"added p50 ms":>13} {"added p99 ms":>13} '
          f'{"frames equal":>13} {"tokens equal":>13} {"max diff":>9}')
    for name, r in results.items():
        print(f'{name:<8} {r["bytes"]:>8} {r["p50"]:>13.2f} {r["p99"]:>13.2f} '
              f'{100 * r["frames_equal"]:>12.1f}% {100 * r["tokens_equal"]:>12.1f}% '
              f'{r["max_token_diff"]:>9}')
    print('added = client encode + RPC round trip - server model time (loopback, this '
          'machine); bytes: the last frame; agreement against the local lossless tokens')
    return 0


if __name__ == '__main__':
    sys.exit(main())
