"""
The real ROS 2 tools in tests: the colcon workspace, ``ros2 launch`` and the ros2 CLI.

The colcon workspace is built once per test run (the ``colcon_ws`` fixture in conftest.py)
with the command the README gives; ``ros2 launch`` runs in its own session and is stopped
with SIGINT to its process group, as a user's Ctrl-C would; every ``ros2`` verb that
discovers the graph gets ``--no-daemon --spin-time 1.5`` (a daemon would outlive the test;
the CLI always waits the whole spin time, once per graph query, so a long one costs every
call seconds). A short spin can see a partial graph on a loaded machine: every call has a
deadline and a check of its answer (a node not found, a list short of the nodes wanted)
and is tried again, a bounded number of times, when the answer is lost or partial.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
VENV = sys.prefix
SKIP_DIRS = {'.venv', '.git', 'build', 'install', 'log', '__pycache__', 'runs', 'data'}
# How long `ros2 node|topic|service|param|lifecycle` wait to discover the graph; a partial
# answer under load is caught by the caller's check and the call is made again.
DISCOVERY = ('--no-daemon', '--spin-time', '1.5')
TOOL_MODULES = ('launch', 'launch_ros', 'ros2cli', 'ros2launch', 'ros2run', 'ros2pkg',
                'ros2node', 'ros2param', 'ros2lifecycle', 'ros2service', 'ros2topic')


def tools_missing() -> Optional[str]:
    """Return why the ROS 2 launch system / CLI cannot run here (None: they can)."""
    missing = [m for m in TOOL_MODULES if importlib.util.find_spec(m) is None]
    if not os.access(os.path.join(VENV, 'bin', 'ros2'), os.X_OK):
        missing.append(os.path.join(VENV, 'bin', 'ros2'))
    if not missing:
        return None
    return ('the ROS 2 launch system and CLI are not installed in this venv (missing: '
            + ', '.join(missing) + '); `make test` installs them from ../shared/ros2-tools '
            'where that folder exists')


# -- the README's commands -----------------------------------------------------------------
@dataclass(frozen=True)
class DocCommand:
    """One shell command found in a Markdown file (a ``&&`` chain gives one per part)."""

    tokens: Tuple[str, ...]
    line: str  # the source text it came from, for messages

    @property
    def text(self) -> str:
        """Return the command as a shell would read it."""
        return shlex.join(self.tokens)


def _split_and(tokens: Sequence[str]) -> List[Tuple[str, ...]]:
    parts, part = [], []
    for token in tokens:
        if token == '&&':
            parts.append(tuple(part))
            part = []
        else:
            part.append(token)
    parts.append(tuple(part))
    return [p for p in parts if p]


def doc_commands(path: str = README, program: str = 'ros2') -> List[DocCommand]:
    """
    Return every ``program ...`` command of a Markdown file, in order, without duplicates.

    Fenced code blocks are read line by line (a ``$ `` prompt and ``# comments`` dropped);
    inline code spans count too, wrapped lines joined. A span naming only a verb
    (```ros2 param describe```) comes back as it is: the caller decides what covers it.
    """
    with open(path, encoding='utf-8') as stream:
        text = stream.read()
    found: List[DocCommand] = []
    fences = list(re.finditer(r'^```[^\n]*\n(.*?)^```', text, re.M | re.S))
    for block in fences:
        for line in block.group(1).splitlines():
            line = re.sub(r'^\s*\$\s+', '', line).strip()
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            found += [DocCommand(part, line) for part in _split_and(tokens)]
    prose = ''.join(text[a:b] for a, b in _gaps([m.span() for m in fences], len(text)))
    for span in re.findall(r'`([^`]+)`', prose, re.S):
        line = ' '.join(span.split())
        try:
            tokens = shlex.split(line)
        except ValueError:
            continue
        found += [DocCommand(part, line) for part in _split_and(tokens)]
    out, seen = [], set()
    for command in found:
        if command.tokens[0] == program and command.tokens not in seen:
            seen.add(command.tokens)
            out.append(command)
    return out


def _gaps(spans, end):
    start = 0
    for a, b in spans:
        yield start, a
        start = b
    yield start, end


# -- the colcon workspace --------------------------------------------------------------------
def copy_checkout(dest: str):
    """
    Copy the checkout as a clone of it would hold it, with the working tree's changes.

    Tracked files and new files git does not ignore (what ``make install`` builds from too,
    so a new module and the import of it travel together); without git, the whole tree.
    """
    try:
        files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others',
                                '--exclude-standard'], cwd=REPO, check=True,
                               capture_output=True).stdout.decode().split('\0')
    except (OSError, subprocess.CalledProcessError):
        files = []
    if files and files != ['']:
        for rel in filter(None, files):
            src = os.path.join(REPO, rel)
            if os.path.isfile(src):
                os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
                shutil.copy2(src, os.path.join(dest, rel))
        # The exported model is generated, not committed: a robot runs `make models`
        # (or copies the export) before building; take this checkout's export along.
        models = os.path.join(REPO, 'models')
        for root, _, names in os.walk(models):
            for name in names:
                rel = os.path.relpath(os.path.join(root, name), REPO)
                if not os.path.exists(os.path.join(dest, rel)):
                    os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
                    shutil.copy2(os.path.join(REPO, rel), os.path.join(dest, rel))
    else:
        shutil.copytree(REPO, dest, ignore=lambda d, names: [n for n in names
                                                             if n in SKIP_DIRS])


def underlay_env(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment with this venv as the ROS underlay (``source /opt/ros/jazzy/setup.bash``)."""
    env = dict(os.environ if base is None else base)
    env['PATH'] = os.path.join(VENV, 'bin') + os.pathsep + env.get('PATH', '')
    env['AMENT_PREFIX_PATH'] = VENV
    env['CMAKE_PREFIX_PATH'] = VENV
    env.pop('PYTHONPATH', None)
    return env


def readme_colcon_build() -> List[str]:
    """Return the README's ``colcon build ...`` command (the part before ``&& source``)."""
    commands = doc_commands(README, program='colcon')
    builds = [c.tokens for c in commands if c.tokens[:2] == ('colcon', 'build')]
    assert builds, 'README.md no longer gives a `colcon build` command'
    return list(builds[0])


@dataclass
class ColconWorkspace:
    """A fresh workspace with the checkout in src/vla_ros, built by the README's command."""

    path: str
    command: List[str]
    build: subprocess.CompletedProcess
    env: Dict[str, str] = field(default_factory=dict)  # after `source install/setup.bash`

    @property
    def ok(self) -> bool:
        """Whether the build succeeded and the install space could be sourced."""
        return self.build.returncode == 0 and bool(self.env)

    def failure(self) -> str:
        """Why the workspace is unusable (the build's output tail)."""
        return (f'{shlex.join(self.command)} exited {self.build.returncode}:\n'
                + (self.build.stdout or '')[-4000:] + (self.build.stderr or '')[-4000:])

    @property
    def install(self) -> str:
        """Return the install space."""
        return os.path.join(self.path, 'install')


def build_workspace(root: str) -> ColconWorkspace:
    """Copy the checkout into ``root``/src/vla_ros, build it, source the install space."""
    ws = os.path.join(root, 'ws')
    copy_checkout(os.path.join(ws, 'src', 'vla_ros'))
    env = underlay_env()
    command = readme_colcon_build() + ['--event-handlers', 'console_cohesion+']
    try:
        build = subprocess.run(command, cwd=ws, env=env, capture_output=True, text=True,
                               timeout=900)
    except subprocess.TimeoutExpired as exc:
        build = subprocess.CompletedProcess(command, -1, str(exc.stdout or ''),
                                            'timed out after 900 s')
    workspace = ColconWorkspace(ws, command, build)
    if build.returncode == 0:
        dump = subprocess.run(
            ['bash', '-c', 'source install/setup.bash && env -0'], cwd=ws, env=env,
            capture_output=True, timeout=120)
        if dump.returncode == 0:
            workspace.env = dict(item.split('=', 1) for item in
                                 dump.stdout.decode().split('\0') if '=' in item)
    return workspace


# -- the ros2 command line -------------------------------------------------------------------
def ros2(args: Sequence[str], env: Dict[str, str], timeout: float = 60.0, attempts: int = 6,
         until: Optional[Callable[[subprocess.CompletedProcess], bool]] = None
         ) -> subprocess.CompletedProcess:
    """
    Run ``ros2 args...`` (``args`` may start with ``ros2``); stdout and stderr together.

    A run past ``timeout`` (an answer lost under load: the CLI waits for it forever) or one
    whose result ``until`` rejects (default: exit code 0) is run again, ``attempts`` times
    at most; the last result is returned (return code -9 for a run that timed out).
    """
    args = list(args[1:] if args and args[0] == 'ros2' else args)
    until = until or (lambda result: result.returncode == 0)
    result = None
    for _ in range(attempts):
        try:
            result = subprocess.run(['ros2'] + args, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or '')
            result = subprocess.CompletedProcess(['ros2'] + args, -9,
                                                 out + f'\n(timed out after {timeout} s)')
        if until(result):
            break
        print(f'ros2 {shlex.join(args)}: exit {result.returncode}, trying again:\n'
              + result.stdout[-1000:], file=sys.stderr, flush=True)
    return result


def ros2_all(calls: Sequence[Sequence[str]], env: Dict[str, str],
             untils: Optional[Sequence[Optional[Callable]]] = None, **kwargs
             ) -> List[subprocess.CompletedProcess]:
    """Run several ``ros2`` calls at once (each waits its spin time mostly idle)."""
    untils = list(untils or [None] * len(calls))
    with ThreadPoolExecutor(max_workers=max(1, min(12, len(calls)))) as pool:
        return list(pool.map(lambda call, until: ros2(call, env, until=until, **kwargs),
                             calls, untils))


def lifecycle_state(output: str) -> str:
    """Return the state named by ``ros2 lifecycle get`` ('active [3]' -> 'active')."""
    match = re.search(r'^(\w+) \[\d+\]\s*$', output, re.M)
    return match.group(1) if match else ''


def param_value(output: str):
    """Return the value printed by ``ros2 param get`` (``Double value is: 20.0`` -> 20.0)."""
    match = re.search(r'^(\w+) (value is|values are): (.*)$', output, re.M)
    if not match:
        raise ValueError(f'not a `ros2 param get` answer: {output!r}')
    kind = match.group(1) if match.group(2) == 'value is' else 'array'
    text = match.group(3).strip()
    if kind == 'Boolean':
        return text == 'True'
    if kind == 'Integer':
        return int(text)
    if kind == 'Double':
        return float(text)
    if kind == 'String':
        return text
    # Arrays print as Python lists, numeric ones as array('d', [...]).
    text = re.sub(r"^array\('\w', (.*)\)$", r'\1', text)
    return json.loads(text.replace("'", '"'))


# -- ros2 launch -----------------------------------------------------------------------------
def _stat(pid: int) -> Optional[Tuple[int, int, str]]:
    """(parent pid, session id, state) of a process, None when it is gone."""
    try:
        with open(f'/proc/{pid}/stat', encoding='utf-8') as stream:
            fields = stream.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[3]), fields[0]


def _cmdline(pid: int) -> List[str]:
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as stream:
            return [a.decode(errors='replace') for a in stream.read().split(b'\0') if a]
    except OSError:
        return []


class Launch:
    """``ros2 launch ...`` in its own session (process group), output in a file."""

    def __init__(self, args: Sequence[str], env: Dict[str, str], log_path: str):
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, 'w', encoding='utf-8')
        self.proc = subprocess.Popen(['ros2'] + self.args[1 if self.args[0] == 'ros2' else 0:],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.returncode: Optional[int] = None

    def output(self) -> str:
        """Everything ``ros2 launch`` and its nodes printed so far."""
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, encoding='utf-8', errors='replace') as stream:
            return stream.read()

    def processes(self) -> Dict[int, List[str]]:
        """Every live process of the launch's session (launch itself and its nodes)."""
        out = {}
        for entry in os.listdir('/proc'):
            if entry.isdigit():
                stat = _stat(int(entry))
                if stat and stat[1] == self.proc.pid and stat[2] != 'Z':
                    out[int(entry)] = _cmdline(int(entry))
        return out

    def node_pids(self, executable: str) -> List[int]:
        """Pids of the session's processes running ``executable``."""
        return [pid for pid, argv in self.processes().items()
                if any(os.path.basename(a) == executable for a in argv[:2])]

    def alive(self) -> bool:
        """Whether ``ros2 launch`` itself still runs."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> Optional[int]:
        """SIGINT to the whole process group (Ctrl-C), then wait; SIGKILL what is left."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                self.returncode = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.returncode = None
        elif self.returncode is None:
            self.returncode = self.proc.returncode
        deadline = time.monotonic() + 10.0
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.returncode

    def kill_leftovers(self):
        """SIGKILL every process still in the session (clean-up after a failed stop)."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def wait_until(predicate: Callable[[], bool], timeout: float, poll: float = 0.5) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` s pass (for external processes)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
