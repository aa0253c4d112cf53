"""
``vla-ros bench remote-loop``: its settings, its command-age arithmetic, and one short run.

The run is a smoke test (one gripper episode on-robot and one served through the fault
proxy with resets, about 20-40 s): it checks that the command runs end to end and reports
every setting, never the figures themselves (rates and success are printed, not asserted).
"""

import json
import os
import subprocess
import sys
import threading

import pytest
from vla_ros.tools.bench_remote_loop import episode_figures, parse_setting

VLA_ROS = os.path.join(os.path.dirname(sys.executable), 'vla-ros')


def test_settings_parse():
    s = parse_setting('300+jitter100+reset0.01+outage1/5+jpeg75+ct1.4+inflight2', 1.0)
    assert (s.remote, s.rtt_ms, s.jitter_ms, s.reset_probability) == (True, 300, 100, 0.01)
    assert (s.outage_for, s.outage_every, s.compression, s.quality) == (1, 5, 'jpeg', 75)
    assert (s.command_timeout, s.in_flight) == (1.4, 2)
    faults = s.faults()
    assert (faults.delay, faults.jitter) == (0.15, 0.05)     # half of the round trip each way
    assert parse_setting('100', 1.0).command_timeout == 1.0
    local = parse_setting('local', 1.0)
    assert not local.remote and local.command_timeout is None   # the parameters file's
    assert parse_setting('local+ct0.8', 1.0).command_timeout == 0.8
    for bad in ('fast', '100+warp9', 'local+jpeg90', '100+outage5/2', '100+reset2'):
        with pytest.raises(ValueError):
            parse_setting(bad, 1.0)
    # Settings differing only in faults share one graph.
    assert parse_setting('0', 1.0).graph_key() == parse_setting('600+jitter50', 1.0).graph_key()
    assert parse_setting('0', 1.0).graph_key() != parse_setting('0+jpeg90', 1.0).graph_key()


class _Records:
    def __init__(self, cmds, targets, commanded=()):
        self.lock = threading.Lock()
        self.cmd_stamps, self.targets, self.commanded = cmds, targets, list(commanded)


def test_command_age_is_taken_from_the_newest_arrived_target():
    # Commands at 20 Hz on [10, 11]; two targets (arrival, sim at arrival, source stamp).
    cmds = [(10.0 + 0.05 * i, 10.0 + 0.05 * i) for i in range(21)]    # (arrival, stamp)
    targets = [(10.12, 10.12, 9.9), (10.52, 10.52, 10.3)]
    f = episode_figures(_Records(cmds, targets), 10.0, 11.0, 0.52)
    assert f['commands'] == 21 and f['loop_ticks'] == 20
    assert f['loop_span'] == pytest.approx(1.0)
    assert f['targets'] == 2
    # 10.00-10.10: no target yet; 10.15-10.40 run the 9.9 one (0.25-0.50 s old), 10.45 and
    # 10.50 find it too old; 10.55-10.80 run the 10.3 one; 10.85-11.00 find it too old.
    assert f['ages'] == pytest.approx([0.25 + 0.05 * k for k in range(6)] * 2)
    assert f['unexecuted'] == 3 + 2 + 4


def test_bench_remote_loop_runs(tmp_path):
    pytest.importorskip('cryptography')
    pytest.importorskip('mujoco')
    out = str(tmp_path / 'figures.json')
    proc = subprocess.run(
        [VLA_ROS, 'bench', 'remote-loop', '--settings', 'local,100+reset0.05', '--tasks',
         'gripper', '--episodes', '1', '--json', out],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert 'loop Hz' in proc.stdout, proc.stdout[-4000:]
    with open(out, encoding='utf-8') as stream:
        rows = json.load(stream)
    assert [r['setting'] for r in rows] == ['local', '100+reset0.05']
    for row in rows:
        assert row['episodes'] == 1, row
        assert row['loop_hz'] > 0, row
