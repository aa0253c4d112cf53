"""
``vla-ros bench model``: batch-1 policy latency per configuration and backend, side by side.

One run exports each configuration (fp32 + the opt-in INT8 variant) into a scratch
directory, then times, with the same inputs and thread count:

* torch eager (the PyTorch module),
* ONNX Runtime fp32 (``policy.onnx``),
* ONNX Runtime INT8 static quantisation (``policy_int8.onnx``),

and prints p50/p99, the ratio to torch eager, the FLOPs and the achieved fraction of this
machine's fp32 matrix-multiply peak (measured in the same run), the INT8 logit drift, and the
text encoder's latency. A figure printer, not a test: nothing here asserts a time limit.
"""

import argparse
import os
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from ..core import model_contract as mc


def measure_matmul_peak(threads: int, size: int = 2048, repeats: int = 10) -> Dict[str, float]:
    """
    Measure the best fp32 GFLOP/s of an n x n x n matrix product, numpy and onnxruntime.

    The machine's peak is taken as the better of the two BLAS implementations, so a
    "fraction of peak" is not flattered by a slow reference.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    flops = 2.0 * size ** 3
    a @ b  # warm up: thread pool, page faults
    out = {'numpy': flops / min(_timed(lambda: a @ b) for _ in range(repeats)) / 1e9}
    try:
        import onnxruntime as ort
        from onnx import helper, TensorProto
    except ImportError:
        return out
    graph = helper.make_graph(
        [helper.make_node('MatMul', ['a', 'b'], ['c'])], 'matmul',
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in 'ab'],
        [helper.make_tensor_value_info('c', TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), so,
                                   providers=['CPUExecutionProvider'])
    session.run(None, {'a': a, 'b': b})
    best = min(_timed(lambda: session.run(None, {'a': a, 'b': b})) for _ in range(repeats))
    out['onnxruntime'] = flops / best / 1e9
    return out


def _load() -> str:
    try:
        return '%.2f' % os.getloadavg()[0]
    except OSError:  # not available on every platform
        return 'n/a'


def _timed(fn: Callable) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def latency(fn: Callable, iterations: int, warmup: int) -> Dict[str, float]:
    """Time ``fn()``: p50/p99/mean in milliseconds."""
    for _ in range(warmup):
        fn()
    times = np.array([_timed(fn) for _ in range(iterations)]) * 1e3
    return {'p50': float(np.percentile(times, 50)), 'p99': float(np.percentile(times, 99)),
            'mean': float(times.mean())}


def interleaved_latency(runs: Dict[str, Callable], iterations: int, warmup: int,
                        block: int = 5) -> Dict[str, Dict[str, float]]:
    """
    Time several callables in rotating blocks, so a burst of load hits them all alike.

    Each block starts with one untimed run: right after a switch the previous runtime's
    worker threads are still spinning (OpenMP in torch) and would be billed to the next.
    """
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in runs}
    while any(len(t) < iterations for t in times.values()):
        for name, fn in runs.items():
            fn()
            for _ in range(min(block, iterations - len(times[name]))):
                times[name].append(_timed(fn) * 1e3)
    return {name: {'p50': float(np.percentile(t, 50)), 'p99': float(np.percentile(t, 99)),
                   'mean': float(np.mean(t))} for name, t in times.items()}


def make_feeds(encoder, seed: int, text: str) -> Dict[str, np.ndarray]:
    """Return a seeded camera-like image plus real text embeddings of ``text``."""
    rng = np.random.default_rng(seed)
    h, w = mc.IMAGE_SIZE
    image = np.clip(rng.integers(0, 256, (1, 1, 1, 3)) + rng.normal(0, 40, (1, h, w, 3)),
                    0, 255).astype(np.uint8)
    emb, mask = encoder.encode(text)
    return {'image': image, 'text_embeddings': emb, 'text_mask': mask}


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """Parse the command-line options of ``vla-ros bench model``."""
    parser = argparse.ArgumentParser(prog='vla-ros bench model',
                                     description='Batch-1 latency of the RT-1 policy.')
    parser.add_argument('--configs', default='tiny,seed', help='comma-separated configs')
    parser.add_argument('--decoding', default='single',
                        choices=('single', 'autoregressive', 'both'))
    parser.add_argument('--iterations', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                        help='intra-op threads for every backend (default: all cores)')
    parser.add_argument('--no-int8', action='store_true', help='skip the INT8 variant')
    parser.add_argument('--work-dir', default='',
                        help='keep the exports here (default: a temporary directory)')
    return parser.parse_args(argv)


def _row(config, backend, stats, flops, torch_p50, peak):
    gflops = flops / 1e9
    achieved = gflops / (stats['p50'] / 1e3)
    ratio = torch_p50 / stats['p50'] if torch_p50 else float('nan')
    return (f'{config:<6} {backend:<22} {stats["p50"]:>8.1f} {stats["p99"]:>8.1f} '
            f'{ratio:>7.2f}x {gflops:>7.2f} {achieved:>8.1f} {100 * achieved / peak:>6.1f}%')


def bench_config(name: str, decoding: str, args, work: str, log) -> List:
    """Export one configuration and time every backend on it (rows: text or tuples)."""
    from ..runtime import BackendOptions, create_backend
    from ..runtime.text_encoder import TextEncoder
    from .export import export
    out_dir = os.path.join(work, f'{name}_{decoding}')
    # INT8 calibration of the unrolled autoregressive graph takes minutes: single pass only.
    with_int8 = not args.no_int8 and decoding == 'single'
    summary = export(name, out_dir, decoding=decoding, int8=with_int8, log=log)
    encoder = TextEncoder(os.path.join(out_dir, 'text_encoder.onnx'))
    feeds = make_feeds(encoder, 0, 'pick up the red apple')
    rows, results = [], {}
    label = f'{name}' if decoding == 'single' else f'{name}-ar'

    def options(path, **extra):
        return BackendOptions(model_file_path=path, intra_op_threads=args.threads,
                              allow_spinning=False, extra=extra)

    policy = os.path.join(out_dir, 'policy.onnx')
    backends = [('torch eager', 'torch', policy),
                ('onnxruntime fp32', 'onnxruntime', policy)]
    if with_int8:
        backends.append(('onnxruntime int8', 'onnxruntime',
                         os.path.join(out_dir, 'policy_int8.onnx')))
    for title, kind, path in backends:
        results[title] = create_backend(kind, options(path))
    runs = {title: (lambda b=backend: b.run(feeds)) for title, backend in results.items()}
    all_stats = interleaved_latency(runs, args.iterations, args.warmup)
    torch_p50 = all_stats['torch eager']['p50']
    for title, stats in all_stats.items():
        rows.append((label, title, stats, summary['flops'], torch_p50))
    if 'onnxruntime int8' in results:
        fp32, int8 = results['onnxruntime fp32'], results['onnxruntime int8']
        diffs, agree = [], []
        for seed, text in enumerate(('pick up the red apple', 'open the top drawer',
                                     'move the sponge left', 'stop')):
            f = make_feeds(encoder, 100 + seed, text)
            a = fp32.run(f)[mc.POLICY_OUTPUT]
            b = int8.run(f)[mc.POLICY_OUTPUT]
            diffs.append(np.abs(a - b))
            agree.append(a.argmax(-1) == b.argmax(-1))
        diff = np.stack(diffs)
        rows.append(f'       int8 logit drift vs fp32 on 4 inputs (random weights): max '
                    f'{diff.max():.4f}, mean {diff.mean():.4f}; argmax tokens agree '
                    f'{100 * np.mean(agree):.0f}%')
    rows.insert(0, f'{label}: {summary["params"] / 1e6:.2f} M parameters, '
                   f'{summary["flops"] / 1e9:.2f} GFLOPs, export {summary["seconds"]:.1f} s')
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``vla-ros bench model``."""
    args = parse_args(argv)
    configs = [c for c in args.configs.split(',') if c]
    decodings = ['single', 'autoregressive'] if args.decoding == 'both' else [args.decoding]
    quiet = (lambda *_: None)
    # The peak is measured before and after the latencies and the best kept: on a shared
    # machine a single short measurement is easily halved by someone else's job.
    load_start = _load()
    peaks = measure_matmul_peak(args.threads)
    header = (f'{"config":<6} {"backend":<22} {"p50 ms":>8} {"p99 ms":>8} {"vs torch":>8} '
              f'{"GFLOPs":>7} {"GFLOP/s":>8} {"%peak":>7}')
    lines = []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or tmp
        for name in configs:
            for decoding in decodings:
                rows += bench_config(name, decoding, args, work, quiet)
        from ..runtime.text_encoder import TextEncoder
        encoder = TextEncoder(os.path.join(work, f'{configs[0]}_{decodings[0]}',
                                           'text_encoder.onnx'), intra_op_threads=1)
        texts = iter(f'pick up object number {i}' for i in range(10 ** 6))
        text_stats = latency(lambda: encoder.encode(next(texts)), args.iterations,
                             args.warmup)
    for name, value in measure_matmul_peak(args.threads).items():
        peaks[name] = max(peaks[name], value)
    peak = max(peaks.values())
    for row in rows:
        lines.append(row if isinstance(row, str) else _row(*row, peak=peak))
    print(f'machine: {os.cpu_count()} CPU cores, {args.threads} intra-op threads, no GPU; '
          f'measured fp32 matmul peak {peak:.1f} GFLOP/s (2048^3, best of 10 before and '
          'after: ' + ', '.join(f'{k} {v:.1f}' for k, v in peaks.items())
          + f'); load average {load_start} at the start, {_load()} at the end')
    print(f'batch-1 latency, {args.iterations} runs per backend after {args.warmup} warm-up, '
          'backends interleaved in blocks of 5 (ONNX Runtime: intra-op spinning off, as in the '
          'inference node)')
    print(header)
    for line in lines:
        print(line)
    print('(int8 rows: GFLOP/s and %peak count the fp32-equivalent work per second)')
    print(f'text encoder (all-MiniLM-L6-v2, 16 tokens, onnxruntime, 1 thread): p50 '
          f'{text_stats["p50"]:.1f} ms, p99 {text_stats["p99"]:.1f} ms per new instruction')
    return 0


if __name__ == '__main__':
    sys.exit(main())
