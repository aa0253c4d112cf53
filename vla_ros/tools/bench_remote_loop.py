"""
``vla-ros bench remote-loop``: the closed loop in simulation with the policy served remotely.

The demo's graph (sim_node and the pipeline nodes on sim time, ``tools/demo.py``) runs the
demo tasks with ``inference_node`` either running the model itself (``local``: backend
onnxruntime, the on-robot case) or with ``backend: remote`` talking to a ``vla-ros serve``
process (TLS + token, as on a robot) through a fault-injecting TCP proxy that this command
owns on 127.0.0.1 (``tools/fault_proxy.py``). Per setting it prints:

* success per task and in all;
* the 20 Hz loop: commands (cmd_vel) per sim second, from the commands' own stamps, and the
  arm commands per sim second; the largest gap between two commands;
* targets (``vla/target``) per sim second: how often the policy's answer arrives;
* command age: at each command, now minus the source (camera) stamp of the target being
  executed, p50 / p99 over the commands that execute one ("fresh", share of commands);
  a command with no target younger than ``command_timeout`` executes none (the base ramps
  to zero, the arm brakes): that is the rest;
* stale targets refused by interpolation_node, the client's round trip p50 and its
  deadline misses and disconnects (from /diagnostics), and sim_node's real-time factor.

A setting is ``local`` or the added round-trip latency in ms (each direction gets half),
followed by ``+``-separated modifiers: ``jitter<ms>`` (each chunk waits a further
uniform(0, ms/2) each way), ``reset<p>`` (each forwarded chunk resets its connection with
probability p), ``outage<for>/<every>`` (seconds: every ``every`` s the path is down for
``for`` s, connections reset), ``jpeg<quality>`` or ``png`` (frame encoding; default raw),
``ct<s>`` (interpolation_node's ``command_timeout``; default ``--command-timeout`` for remote
settings, the parameters file's for ``local``), ``inflight<n>`` (``remote_max_in_flight``).
Example: ``local,0,100,300,600,300+ct0.5,300+jitter100,0+jpeg50``.

Settings that need the same graph (backend, encoding, timeouts) share one start of it; the
proxy's faults change between them. Latency is added in wall time while the graph runs on
sim time: on a machine that cannot keep the real-time factor at 1 a wall delay is less
sim time (the factor is printed). A figure printer, not a test.
"""

import argparse
from dataclasses import dataclass, field
import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

DEFAULT_SETTINGS = 'local,0,100,300,600'
DEFAULT_TASKS = ('drive_to_marker', 'gripper', 'push_block')
DEFAULT_COMMAND_TIMEOUT = 1.0
CONTROL_HZ = 20.0


@dataclass
class Setting:
    """One row of the table."""

    name: str
    remote: bool = True
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    reset_probability: float = 0.0
    outage_for: float = 0.0
    outage_every: float = 0.0
    compression: str = 'raw'
    quality: int = 90
    command_timeout: Optional[float] = None
    in_flight: int = 1
    results: Dict = field(default_factory=dict)

    def faults(self):
        """Return the proxy's faults for this setting."""
        from .fault_proxy import Faults
        return Faults(delay=self.rtt_ms / 2e3, jitter=self.jitter_ms / 2e3,
                      reset_probability=self.reset_probability,
                      outage_every=self.outage_every, outage_for=self.outage_for)

    def graph_key(self) -> Tuple:
        """Return what the graph needs: settings with equal keys share one start of it."""
        return (self.remote, self.compression, self.quality, self.command_timeout,
                self.in_flight)


def parse_setting(text: str, command_timeout: float) -> Setting:
    """Parse ``local`` / ``<rtt ms>`` with ``+`` modifiers (module docstring)."""
    head, *mods = [p.strip() for p in text.strip().split('+')]
    if head == 'local':
        s = Setting(text.strip(), remote=False)
    else:
        try:
            s = Setting(text.strip(), rtt_ms=float(head.rstrip('ms')))
        except ValueError:
            raise ValueError(f'setting {text!r}: starts with local or a latency in ms')
    for mod in mods:
        try:
            if mod.startswith('jitter'):
                s.jitter_ms = float(mod[6:].rstrip('ms'))
            elif mod.startswith('reset'):
                s.reset_probability = float(mod[5:])
            elif mod.startswith('outage'):
                s.outage_for, s.outage_every = (float(v) for v in mod[6:].split('/'))
            elif mod.startswith('jpeg'):
                s.compression, s.quality = 'jpeg', int(mod[4:] or 90)
            elif mod == 'png':
                s.compression = 'png'
            elif mod.startswith('ct'):
                s.command_timeout = float(mod[2:])
            elif mod.startswith('inflight'):
                s.in_flight = int(mod[8:])
            else:
                raise ValueError(mod)
        except ValueError:
            raise ValueError(f'setting {text!r}: modifier {mod!r} not understood')
    if not s.remote and (s.rtt_ms or s.jitter_ms or s.reset_probability or s.outage_for
                         or s.compression != 'raw' or s.in_flight != 1):
        raise ValueError(f'setting {text!r}: local takes only ct<s>')
    if s.remote and s.command_timeout is None:
        s.command_timeout = command_timeout
    s.faults()  # validates
    return s


def _probe_class():
    from vla_ros_interfaces.msg import ActionTarget
    from ..testing.sim_probe import SimProbe
    from ..nodes.common import COMMAND_QOS

    class LoopProbe(SimProbe):
        """The demo's probe, also keeping command stamps and targets' source stamps."""

        def __init__(self, tasks):
            self.cmd_stamps: List[Tuple[float, float]] = []       # (arrival, stamp)
            self.targets: List[Tuple[float, float, float]] = []   # (arrival, sim, stamp)
            super().__init__(tasks)
            self.node.create_subscription(ActionTarget, 'vla/target', self._on_target,
                                          COMMAND_QOS)

        def _on_cmd_vel(self, msg):
            super()._on_cmd_vel(msg)
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            with self.lock:
                self.cmd_stamps.append((time.monotonic(), stamp))

        def _on_target(self, msg):
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            with self.lock:
                self.targets.append((time.monotonic(), self.sim_now, stamp))

    return LoopProbe


def episode_figures(rec, start: float, end: float, command_timeout: float) -> Dict:
    """Figures of one episode from the probe's records, sim-time window [start, end]."""
    with rec.lock:
        cmds = [c for c in rec.cmd_stamps if start <= c[1] <= end]
        arm = sum(1 for t, _ in rec.commanded if start <= t <= end)
        targets = [t for t in rec.targets if start <= t[1] <= end]
        all_targets = list(rec.targets)
    out = {'sim_s': end - start, 'commands': len(cmds), 'arm_commands': arm,
           'targets': len(targets), 'ages': [], 'unexecuted': 0,
           'loop_ticks': 0, 'loop_span': 0.0, 'wall_span': 0.0, 'max_gap': 0.0, 'missed': 0}
    if len(cmds) < 2:
        return out
    stamps = np.array([c[1] for c in cmds])
    out['loop_ticks'] = len(cmds) - 1
    out['loop_span'] = float(stamps[-1] - stamps[0])
    out['wall_span'] = cmds[-1][0] - cmds[0][0]
    gaps = np.diff(stamps)
    out['max_gap'] = float(gaps.max())
    # Control periods with no command: a tick the node skipped (or one the probe lost).
    out['missed'] = int(np.maximum(np.round(gaps * CONTROL_HZ) - 1, 0).sum())
    # The target a command executes: the newest (by source stamp) that had arrived before
    # the command, if younger than command_timeout at the command's stamp.
    i, newest = 0, None
    for arrival, stamp in cmds:
        while i < len(all_targets) and all_targets[i][0] <= arrival:
            newest = all_targets[i][2] if newest is None else max(newest, all_targets[i][2])
            i += 1
        age = None if newest is None else stamp - newest
        if age is not None and -0.05 <= age <= command_timeout:
            out['ages'].append(age)
        else:
            out['unexecuted'] += 1
    return out


def summarize(setting: Setting, episodes: List[Dict], diag_before: Dict, diag_after: Dict
              ) -> Dict:
    """Combine a setting's episodes into its row."""
    figs = [e['figures'] for e in episodes]
    ages = np.concatenate([np.asarray(f['ages'], float) for f in figs]) if figs else []
    ticks = sum(f['loop_ticks'] for f in figs)
    span = sum(f['loop_span'] for f in figs)
    sim_s = sum(f['sim_s'] for f in figs)
    wall = sum(f['wall_span'] for f in figs)
    commands = sum(f['commands'] for f in figs)

    def counter(node, key):
        try:
            return (int(float(diag_after.get(node, {}).get(key, 0)))
                    - int(float(diag_before.get(node, {}).get(key, 0))))
        except ValueError:
            return 0
    tasks: Dict[str, List[int]] = {}
    for e in episodes:
        tasks.setdefault(e['task'], [0, 0])
        tasks[e['task']][0] += int(e['success'])
        tasks[e['task']][1] += 1
    inf = diag_after.get('inference_node', {})
    return {
        'tasks': tasks,
        'successes': sum(int(e['success']) for e in episodes), 'episodes': len(episodes),
        'loop_hz': ticks / span if span > 0 else 0.0,
        'arm_hz': sum(f['arm_commands'] for f in figs) / sim_s if sim_s > 0 else 0.0,
        'max_gap_ms': 1e3 * max((f['max_gap'] for f in figs), default=0.0),
        'missed_ticks': sum(f['missed'] for f in figs),
        'node_hz': diag_after.get('interpolation_node', {}).get('rate_hz', ''),
        'targets_hz': sum(f['targets'] for f in figs) / sim_s if sim_s > 0 else 0.0,
        'fresh': len(ages) / commands if commands else 0.0,
        'age_p50_ms': 1e3 * float(np.percentile(ages, 50)) if len(ages) else float('nan'),
        'age_p99_ms': 1e3 * float(np.percentile(ages, 99)) if len(ages) else float('nan'),
        'stale_refused': counter('interpolation_node', 'rejected_stale_targets'),
        'deadline_missed': counter('inference_node', 'remote_deadline_exceeded'),
        'disconnects': counter('inference_node', 'remote_disconnects'),
        'rtt_p50_ms': inf.get('remote_round_trip_ms_p50', '') if setting.remote else '',
        'rtf': span / wall if wall > 0 else 0.0,
        'command_timeout': setting.command_timeout,
        'episodes_detail': [{k: v for k, v in e.items() if k != 'figures'}
                            for e in episodes],
    }


def _graph_overrides(setting: Setting, args, server: Dict, proxy) -> Dict[str, Dict]:
    overrides: Dict[str, Dict[str, object]] = {
        'sim_node': {'real_time_factor': float(args.real_time_factor)},
        'interpolation_node': {}}
    if setting.command_timeout is not None:
        overrides['interpolation_node']['command_timeout'] = float(setting.command_timeout)
    if setting.remote:
        overrides['inference_node'] = {
            'backend': 'remote', 'remote_endpoint': proxy.endpoint,
            'remote_robot_id': server['robot_id'], 'remote_ca_file': server['ca_file'],
            'remote_token_file': server['token_file'],
            'remote_deadline': float(args.deadline or setting.command_timeout),
            'remote_compression': setting.compression,
            'remote_jpeg_quality': int(setting.quality),
            'remote_max_in_flight': int(setting.in_flight),
            'remote_reconnect_backoff_max': 1.0}
    else:
        overrides['inference_node'] = {
            'model_file_path': os.path.join(args.model_dir, 'policy.onnx'),
            'intra_op_threads': int(args.threads)}
    return overrides


def _snapshot(rec) -> Dict[str, Dict[str, str]]:
    return {n: rec.diagnostic_values(n) for n in ('inference_node', 'interpolation_node')}


def run(args, settings: List[Setting]) -> None:
    """Run every setting; fill ``setting.results``."""
    from .bench_remote import _start_server
    from .demo import episode_line, run_episode, wait_ready
    from .fault_proxy import FaultProxy
    from ..processes import ProcessGroup
    from ..graph import dds_profile_env, node_params, pipeline_nodes

    shipped_timeout = float(node_params(args.params_file, 'interpolation_node')
                            .get('command_timeout', 0.5))
    for s in settings:
        if s.command_timeout is None:
            s.command_timeout = shipped_timeout
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.update(dds_profile_env(os.environ, True))
    probe_class = _probe_class()
    total = len(args.tasks) * args.episodes
    with tempfile.TemporaryDirectory(prefix='vla_bench_loop_') as folder:
        # The server runs the action space the robot's parameters name (the client checks
        # that they agree when it connects).
        space_file = node_params(args.params_file, 'inference_node').get('action_space_file', '')
        server_args = argparse.Namespace(threads=args.threads, model=args.model_dir,
                                         action_space=space_file, plaintext=False)
        proc, server = (None, None)
        proxy = None
        if any(s.remote for s in settings):
            proc, server = _start_server(server_args, folder)
            host, _, port = server['endpoint'].rpartition(':')
            proxy = FaultProxy(host, int(port))
            proxy.start()
            print(f'server {server["endpoint"]} (TLS + token) behind fault proxy '
                  f'{proxy.endpoint}', flush=True)
        try:
            i = 0
            while i < len(settings):
                key = settings[i].graph_key()
                group_settings = []
                while i < len(settings) and settings[i].graph_key() == key:
                    group_settings.append(settings[i])
                    i += 1
                first = group_settings[0]
                if proxy is not None:
                    proxy.set_faults(first.faults())
                specs = pipeline_nodes(with_sim=True,
                                       overrides=_graph_overrides(first, args, server, proxy))
                group = ProcessGroup(args.params_file, use_sim_time=True,
                                     quiet=not args.verbose)
                rec = None
                try:
                    group.start_all(specs)
                    rec = probe_class(args.tasks)
                    wait_ready(rec, group)
                    for s in group_settings:
                        if proxy is not None:
                            proxy.set_faults(s.faults())
                        print(f'-- {s.name}', flush=True)
                        before = _snapshot(rec)
                        episodes = []
                        for task in args.tasks:
                            for k in range(args.episodes):
                                result = run_episode(rec, group, task, args.first_seed + k,
                                                     args.real_time_factor)
                                result['figures'] = episode_figures(
                                    rec, result['start_sim_time'], result['end_sim_time'],
                                    s.command_timeout)
                                episodes.append(result)
                                print(f'  [{len(episodes):3d}/{total}] '
                                      f'{episode_line(result)}', flush=True)
                        rec.set_enabled(False)
                        rec.wait_for(lambda: False, 2.5)   # one more /diagnostics report
                        s.results = summarize(s, episodes, before, _snapshot(rec))
                finally:
                    if rec is not None:
                        rec.close()
                    group.stop()
        finally:
            if proxy is not None:
                proxy.stop()
            if proc is not None:
                proc.terminate()
                proc.wait(30)


def _num(value, digits: int) -> str:
    try:
        return f'{float(value):.{digits}f}'
    except (TypeError, ValueError):
        return '-'


def table(settings: List[Setting], tasks: Sequence[str]) -> str:
    """Return the printed table."""
    short = {'drive_to_marker': 'drive', 'gripper': 'grip', 'push_block': 'push',
             'pick_block': 'pick', 'place_in_bowl': 'place'}
    head = (f'{"setting":<22} {"ct s":>4} {"success":>8} '
            + ' '.join(f'{short.get(t, t)[:6]:>6}' for t in tasks)
            + f' {"loop Hz":>8} {"node Hz":>7} {"missed":>6} {"arm Hz":>6} {"gap ms":>6}'
            f' {"tgt Hz":>6} {"fresh":>6}'
            f' {"age p50":>7} {"age p99":>7} {"stale":>5} {"rtt p50":>7} {"dl miss":>7}'
            f' {"disc":>4} {"rtf":>5}')
    lines = [head]
    for s in settings:
        r = s.results
        if not r:
            lines.append(f'{s.name:<22} (not run)')
            continue
        per_task = ' '.join(f'{"%d/%d" % tuple(r["tasks"].get(t, (0, 0))):>6}' for t in tasks)
        name = s.name + (' (on-robot)' if not s.remote else '')
        rtt = _num(r['rtt_p50_ms'], 0)
        lines.append(
            f'{name:<22} {r["command_timeout"]:>4.1f} {r["successes"]:>4}/{r["episodes"]:<3} '
            f'{per_task} {r["loop_hz"]:>8.3f} {_num(r["node_hz"], 3):>7} '
            f'{r["missed_ticks"]:>6} {r["arm_hz"]:>6.2f} {r["max_gap_ms"]:>6.0f} '
            f'{r["targets_hz"]:>6.2f} {100 * r["fresh"]:>5.0f}% {r["age_p50_ms"]:>7.0f} '
            f'{r["age_p99_ms"]:>7.0f} {r["stale_refused"]:>5} {rtt:>7} '
            f'{r["deadline_missed"] if s.remote else "-":>7} '
            f'{r["disconnects"] if s.remote else "-":>4} {r["rtf"]:>5.2f}')
    return '\n'.join(lines)


def main(argv: Sequence[str] = None) -> int:
    """Run the settings and print the table."""
    from ..paths import default_model_dir, default_params_file
    from ..sim.tasks import TASK_NAMES
    p = argparse.ArgumentParser(prog='vla-ros bench remote-loop',
                                description=__doc__.split('\n\n')[0])
    p.add_argument('--settings', default=DEFAULT_SETTINGS,
                   help='comma-separated settings (see the module docstring)')
    p.add_argument('--tasks', nargs='+', default=list(DEFAULT_TASKS), choices=TASK_NAMES)
    p.add_argument('--episodes', type=int, default=3, help='episodes per task and setting')
    p.add_argument('--first-seed', type=int, default=100000,
                   help='first seed (the evaluation seeds, as vla-ros demo)')
    p.add_argument('--command-timeout', type=float, default=DEFAULT_COMMAND_TIMEOUT,
                   help='interpolation_node command_timeout for remote settings without ct<s>')
    p.add_argument('--deadline', type=float, default=0.0,
                   help="remote_deadline (default: the setting's command_timeout)")
    p.add_argument('--model-dir', default=default_model_dir())
    p.add_argument('--params-file', default=default_params_file())
    p.add_argument('--threads', type=int, default=2, help='model intra-op threads, both sides')
    p.add_argument('--real-time-factor', type=float, default=1.0)
    p.add_argument('--json', default='', help='also write the figures to this file')
    p.add_argument('--verbose', action='store_true', help='forward node logs')
    args = p.parse_args(argv)
    try:
        settings = [parse_setting(t, args.command_timeout)
                    for t in args.settings.split(',') if t.strip()]
    except ValueError as exc:
        print(f'vla-ros bench remote-loop: {exc}', file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(args.model_dir, 'policy.onnx')):
        print(f'vla-ros bench remote-loop: no policy in {args.model_dir}; run `make models`',
              file=sys.stderr)
        return 2
    code = 0
    try:
        run(args, settings)
    except (RuntimeError, KeyboardInterrupt) as exc:
        print(f'vla-ros bench remote-loop: stopped early: {exc}', file=sys.stderr)
        code = 1
    print(f'{len(args.tasks)} tasks x {args.episodes} episodes per setting, seeds from '
          f'{args.first_seed}; latency = added round trip (half each way), wall time')
    print(table(settings, args.tasks))
    print('loop Hz: cmd_vel per sim second from its stamps (target 20.00 +- 0.5 %); node Hz: '
          "interpolation_node's own tick rate (/diagnostics, sim time, its last 2000 ticks); "
          'missed: control periods without a command; arm Hz: arm commands '
          'per sim second; gap: longest cmd_vel interval; tgt Hz: vla/target per sim second; '
          'fresh: commands executing a target younger than ct; age: command stamp - source '
          'stamp of that target (ms, sim time); stale: targets refused by '
          'interpolation_node; rtt: client round trip p50 (ms); dl miss / disc: remote '
          'deadline misses / disconnects; rtf: sim s per wall s')
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as stream:
            json.dump([{'setting': s.name, **s.results} for s in settings], stream, indent=2)
    return code


if __name__ == '__main__':
    sys.exit(main())
