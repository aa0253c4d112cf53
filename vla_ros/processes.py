"""
Node processes: the environment they start with, a supervised group, a clean interrupt.

What `vla-ros up`, the demo, the benchmarks and the tests use to run nodes as separate
processes: one process per node, logs forwarded with the node name, everything stopped
cleanly on Ctrl-C or as soon as one node exits unexpectedly. (`ros2 launch` with the
launch files does the same on a robot.)
"""

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, TextIO

from .graph import dds_profile_env, NodeSpec, ros_args


def child_env(extra: Optional[Dict[str, str]] = None, dds_profile: bool = True
              ) -> Dict[str, str]:
    """
    Return the environment for node processes.

    Loopback discovery, unbuffered logs, malloc thresholds that stop glibc from
    page-faulting on every ~1 MB image message, and the shipped Fast DDS profile (large
    shared-memory segment) unless ``dds_profile`` is false or the user chose their own.
    """
    env = dict(os.environ)
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env.setdefault('PYTHONUNBUFFERED', '1')
    env.setdefault('RCUTILS_COLORIZED_OUTPUT', '0')
    env.setdefault('RCUTILS_CONSOLE_OUTPUT_FORMAT', '[{severity}] [{name}]: {message}')
    env.setdefault('MALLOC_MMAP_THRESHOLD_', str(16 * 1024 * 1024))
    env.setdefault('MALLOC_TRIM_THRESHOLD_', str(64 * 1024 * 1024))
    env.setdefault('MUJOCO_GL', 'egl')
    env.update(dds_profile_env(env, dds_profile))
    env.update(extra or {})
    return env


def held_in_teardown(code: int, lines: Sequence[str]) -> bool:
    """
    Tell whether a node was ended by its shutdown watchdog inside the middleware teardown.

    Fast DDS participant deletion was seen to hang under load; ``nodes/common.run`` then
    logs where it was stuck and exits (code 1 when only the faulthandler could act). Tests
    accept that exit, and show it, only with the stuck stack in the node's own output.
    """
    return code == 1 and any('in destroy_node' in line or 'in try_shutdown' in line
                             or 'node clean-up still running' in line for line in lines)


def interrupt(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT one process (rclpy shuts down cleanly), SIGKILL it after ``timeout`` s."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.returncode


def interrupt_and_read(proc: subprocess.Popen, timeout: float = 10.0):
    """``interrupt`` a process whose output is a pipe; return (exit code, its output)."""
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out


class ProcessGroup:
    """A set of node processes supervised together."""

    def __init__(self, params_file: str = '', namespace: str = '', use_sim_time: bool = False,
                 log_level: str = 'info', env: Optional[Dict[str, str]] = None,
                 log: TextIO = sys.stdout, quiet: bool = False, dds_profile: bool = True,
                 respawn: bool = False, respawn_delay: float = 2.0):
        """``respawn``: restart a node that exits (after ``respawn_delay`` s) in ``failed``."""
        self.params_file = params_file
        self.respawn = respawn
        self.respawn_delay = respawn_delay
        self.respawns: Dict[str, int] = {}
        self.specs: Dict[str, NodeSpec] = {}
        self._died_at: Dict[str, float] = {}
        self.namespace = namespace
        self.use_sim_time = use_sim_time
        self.log_level = log_level
        self.env = child_env(env, dds_profile)
        self.log = log
        self.quiet = quiet
        self.procs: Dict[str, subprocess.Popen] = {}
        self.lines: Dict[str, List[str]] = {}
        self._threads: List[threading.Thread] = []
        self._stopping = False
        self._lock = threading.Lock()

    def command(self, spec: NodeSpec) -> List[str]:
        """Return the argv that starts one node."""
        return [sys.executable, '-m', f'vla_ros.nodes.{spec.executable}'] + ros_args(
            spec, self.params_file, self.namespace, self.use_sim_time, self.log_level)

    def start(self, spec: NodeSpec) -> subprocess.Popen:
        """Start one node and a thread forwarding its output."""
        proc = subprocess.Popen(self.command(spec), env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1,
                                start_new_session=True)
        self.procs[spec.name] = proc
        self.specs[spec.name] = spec
        self.lines.setdefault(spec.name, [])
        t = threading.Thread(target=self._forward, args=(spec.name, proc), daemon=True)
        t.start()
        self._threads.append(t)
        return proc

    def start_all(self, specs: Sequence[NodeSpec]):
        """Start every node in order."""
        for spec in specs:
            self.start(spec)

    def _forward(self, name: str, proc: subprocess.Popen):
        for line in proc.stdout:
            line = line.rstrip('\n')
            with self._lock:
                buf = self.lines[name]
                buf.append(line)
                del buf[:-2000]
                if not self.quiet:
                    print(f'[{name}] {line}', file=self.log, flush=True)

    def failed(self) -> Optional[str]:
        """
        Name and exit code of a node that exited while it should be running.

        With ``respawn`` such a node is started again ``respawn_delay`` s after it exited
        (as launch_ros's respawn does) and nothing is reported.
        """
        for name, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None or self._stopping:
                continue
            if not self.respawn:
                return f'{name} exited with code {code}'
            died = self._died_at.setdefault(name, time.monotonic())
            if time.monotonic() - died >= self.respawn_delay:
                del self._died_at[name]
                self.respawns[name] = self.respawns.get(name, 0) + 1
                self._note(name, f'exited with code {code}; respawning '
                                 f'(#{self.respawns[name]})')
                self.start(self.specs[name])
        return None

    def _note(self, name: str, text: str):
        with self._lock:
            self.lines.setdefault(name, []).append(f'[vla-ros up] {text}')
        if not self.quiet:
            print(f'[{name}] {text}', file=self.log, flush=True)

    def kill(self, name: str, sig=signal.SIGKILL):
        """Send ``sig`` to one node (tests use this to simulate a crash)."""
        self.procs[name].send_signal(sig)

    def stop(self, timeout: float = 10.0) -> Dict[str, Optional[int]]:
        """SIGINT every node (rclpy shuts down cleanly), escalate after ``timeout`` s."""
        self._stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(3.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for t in self._threads:
            t.join(timeout=2.0)
        return {name: proc.returncode for name, proc in self.procs.items()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
