"""
Language-conditioned tabletop tasks for the simulated robot (RT-1 style).

Each task has an instruction, a seeded reset distribution, a success check and a time
limit, kept apart from the physics (``robot.py``), as dm_control's composer separates a
task from its physics hooks. Every random draw comes from an explicit
``numpy.random.Generator`` built from the episode seed: the same (task, seed) gives the same
scene, the same instruction and, with the same commands, the same trajectory.

Frames: the robot starts every episode at the world origin facing +x, so "left" is +y.

Length (over 300 lines): five task definitions and the episode environment that runs them;
each task is short.
"""

from dataclasses import dataclass, field
import math
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from vla_ros.core.params import default_period
from vla_ros.sim.robot import Robot

TABLE_TOP = 0.40
BLOCK_HALF = 0.02
BLOCK_COLOURS = ('red', 'green', 'blue')
MARKER_COLOURS = ('yellow', 'magenta', 'cyan')
# Block and bowl sampling area on the table (world frame, the base starts at the origin).
BLOCK_X = (0.50, 0.66)
BLOCK_Y = (-0.20, 0.20)
BOWL_X = (0.56, 0.70)
BOWL_Y = (-0.22, 0.22)
BOWL_INNER_RADIUS = 0.078


@dataclass
class Episode:
    """One task instance: what to do, how it was drawn, and how it is going."""

    task: str
    seed: int
    instruction: str
    time_limit: float
    params: Dict = field(default_factory=dict)
    success: bool = False
    start_time: float = 0.0

    def to_dict(self, now: float) -> Dict:
        """JSON-friendly status (published by sim_node on ``sim/task_status``)."""
        elapsed = max(0.0, now - self.start_time)
        out = {'task': self.task, 'seed': self.seed, 'instruction': self.instruction,
               'success': self.success, 'episode_time': round(elapsed, 3),
               'time_limit': self.time_limit,
               'done': bool(self.success or elapsed >= self.time_limit)}
        # The episode's variant, so recordings of it become datasets with these fields.
        out.update({k: self.params[k] for k in ('colour', 'direction', 'close')
                    if k in self.params})
        return out


class Task:
    """Base class: subclasses set ``name``/``time_limit`` and implement the three hooks."""

    name = ''
    time_limit = 10.0

    def sample(self, rng: np.random.Generator) -> Tuple[str, Dict]:
        """Draw the task's variant: return (instruction, params)."""
        raise NotImplementedError

    def initial_gripper(self, params: Dict) -> float:
        """Gripper state the episode starts in (0 open, 1 closed)."""
        return 0.0

    def layout_ok(self, params: Dict, blocks: Dict[str, np.ndarray], bowl: np.ndarray) -> bool:
        """Extra constraint on the sampled scene (e.g. room to push); default accepts."""
        return True

    def check(self, robot: Robot, episode: Episode) -> bool:
        """Return True when the task is achieved in the robot's current state."""
        raise NotImplementedError

    def target_body(self, params: Dict) -> Optional[str]:
        """Return the body the instruction names (None: the task names no object)."""
        return None


class ColourTask(Task):
    """A task about one object of a drawn colour: ``instruction`` names it (``{colour}``)."""

    colours: Tuple[str, ...] = BLOCK_COLOURS
    instruction = ''

    def draw_colour(self, rng: np.random.Generator) -> str:
        """Draw the colour of the object the task is about (the episode's first draw)."""
        return self.colours[rng.integers(len(self.colours))]

    def sample(self, rng: np.random.Generator) -> Tuple[str, Dict]:
        """Draw the colour; the instruction names it."""
        colour = self.draw_colour(rng)
        return self.instruction.format(colour=colour), {'colour': colour}

    def target_body(self, params: Dict) -> Optional[str]:
        """Return the named block (the marker for ``drive_to_marker``)."""
        return f'block_{params["colour"]}'


def _block_pos(robot: Robot, colour: str) -> np.ndarray:
    return robot.body_position(f'block_{colour}')


def _block_touches_fingers(robot: Robot, colour: str) -> bool:
    m, d = robot.model, robot.data
    block = m.geom(f'block_{colour}').id
    fingers = {m.geom('finger_left').id, m.geom('finger_right').id}
    for i in range(d.ncon):
        c = d.contact[i]
        pair = {int(c.geom1), int(c.geom2)}
        if block in pair and pair & fingers:
            return True
    return False


class PickBlock(ColourTask):
    """'pick up the <colour> block': lift it at least 8 cm above the table."""

    name = 'pick_block'
    instruction = 'pick up the {colour} block'
    time_limit = 12.0
    lift_height = 0.08

    def check(self, robot, episode):
        z = _block_pos(robot, episode.params['colour'])[2]
        return bool(z - BLOCK_HALF - TABLE_TOP >= self.lift_height)


class PlaceInBowl(ColourTask):
    """'put the <colour> block in the bowl': block resting inside the bowl, released."""

    name = 'place_in_bowl'
    instruction = 'put the {colour} block in the bowl'
    time_limit = 20.0

    def check(self, robot, episode):
        colour = episode.params['colour']
        p = _block_pos(robot, colour)
        bowl = robot.body_position('bowl')
        inside = (np.linalg.norm(p[:2] - bowl[:2]) < BOWL_INNER_RADIUS - 0.01
                  and p[2] < bowl[2] + 0.06)
        speed = np.linalg.norm(robot.data.body(f'block_{colour}').cvel[3:])
        return bool(inside and speed < 0.05 and not _block_touches_fingers(robot, colour))


class PushBlock(ColourTask):
    """'push the <colour> block to the left/right': slide it >= 10 cm that way, on the table."""

    name = 'push_block'
    time_limit = 15.0
    distance = 0.10

    def sample(self, rng):
        colour = self.draw_colour(rng)
        side = ('left', 'right')[rng.integers(2)]
        return (f'push the {colour} block to the {side}',
                {'colour': colour, 'direction': side, 'sign': 1.0 if side == 'left' else -1.0})

    def layout_ok(self, params, blocks, bowl):
        # Keep the swept corridor (the gripper behind the block, then 15 cm of travel)
        # free of other objects, and stay on the table and in reach.
        p = blocks[params['colour']]
        sign = params['sign']
        y_from, y_to = sorted((p[1] - sign * 0.09, p[1] + sign * 0.17))
        if not (-0.30 <= y_from and y_to <= 0.30):
            return False
        others = [q for c, q in blocks.items() if c != params['colour']] + [bowl]
        clearances = [0.06] * (len(others) - 1) + [0.12]
        for q, gap in zip(others, clearances):
            if abs(q[0] - p[0]) < gap + 0.03 and y_from - gap < q[1] < y_to + gap:
                return False
        return True

    def check(self, robot, episode):
        p = _block_pos(robot, episode.params['colour'])
        start = episode.params['block_start']
        moved = episode.params['sign'] * (p[1] - start[1])
        on_table = p[2] < TABLE_TOP + BLOCK_HALF + 0.01
        return bool(moved >= self.distance and on_table)


class DriveToMarker(ColourTask):
    """'drive to the <colour> marker': base centre within 10 cm of the marker's centre."""

    name = 'drive_to_marker'
    colours = MARKER_COLOURS
    instruction = 'drive to the {colour} marker'
    time_limit = 15.0
    tolerance = 0.10

    def target_body(self, params):
        """Return the named marker."""
        return f'marker_{params["colour"]}'

    def check(self, robot, episode):
        odom = robot.odometry()
        target = robot.body_position(self.target_body(episode.params))
        return bool(math.hypot(odom.x - target[0], odom.y - target[1]) <= self.tolerance)


class Gripper(Task):
    """'open the gripper' / 'close the gripper', starting from the opposite state."""

    name = 'gripper'
    time_limit = 3.0

    def sample(self, rng):
        close = bool(rng.integers(2))
        return ('close the gripper' if close else 'open the gripper'), {'close': close}

    def initial_gripper(self, params):
        return 0.0 if params['close'] else 1.0

    def check(self, robot, episode):
        g = robot.gripper_closure()
        return bool(g >= 0.9) if episode.params['close'] else bool(g <= 0.1)


TASKS: Dict[str, Callable[[], Task]] = {
    t.name: t for t in (PickBlock, PlaceInBowl, PushBlock, DriveToMarker, Gripper)}
TASK_NAMES: List[str] = list(TASKS)


def make_task(name: str) -> Task:
    """Instantiate a task by name; unknown names list the known ones."""
    try:
        return TASKS[name]()
    except KeyError:
        raise ValueError(f'unknown task {name!r}; expected one of {TASK_NAMES}') from None


def _sample_layout(rng: np.random.Generator):
    """Blocks and bowl on the table, not overlapping (rejection sampling)."""
    for _ in range(1000):
        bowl = np.array([rng.uniform(*BOWL_X), rng.uniform(*BOWL_Y), TABLE_TOP])
        blocks = {}
        for colour in BLOCK_COLOURS:
            for _ in range(100):
                p = np.array([rng.uniform(*BLOCK_X), rng.uniform(*BLOCK_Y),
                              TABLE_TOP + BLOCK_HALF])
                if (np.linalg.norm(p[:2] - bowl[:2]) > 0.16 and all(
                        np.linalg.norm(p[:2] - q[:2]) > 0.09 for q in blocks.values())):
                    blocks[colour] = p
                    break
        if len(blocks) == len(BLOCK_COLOURS):
            yaws = {c: float(rng.uniform(-math.pi / 4, math.pi / 4)) for c in BLOCK_COLOURS}
            return blocks, yaws, bowl
    raise RuntimeError('could not place the objects on the table')  # pragma: no cover


@dataclass
class Scene:
    """An episode's draw before the robot is involved: instruction, objects on the table."""

    rng: np.random.Generator  # the episode's generator, where the draw left it
    instruction: str
    params: Dict
    blocks: Dict[str, np.ndarray]  # world positions (the base starts at the origin)
    yaws: Dict[str, float]
    bowl: np.ndarray


def draw_scene(task: str, seed: int) -> Scene:
    """
    Draw the instruction and the table layout of ``task``'s episode ``seed``.

    No simulator needed: training reads where the bowl of a recorded episode stood from its
    (task, seed) alone. ``TaskEnv.reset`` draws the floor markers next, from the same
    generator.
    """
    # One generator per episode, seeded by (seed, task) so tasks do not share draws.
    rng = np.random.default_rng([int(seed), TASK_NAMES.index(task)])
    drawn = make_task(task)
    instruction, params = drawn.sample(rng)
    for _ in range(1000):
        blocks, yaws, bowl = _sample_layout(rng)
        if drawn.layout_ok(params, blocks, bowl):
            return Scene(rng, instruction, params, blocks, yaws, bowl)
    raise RuntimeError(f'no valid layout for task {task!r} seed {seed}')  # pragma: no cover


# Where the target marker of "drive to the <colour> marker" is drawn: on the floor beside
# the robot, inside the head camera's view at the start of the episode (a memoryless image
# policy must see where to go), and reachable on a straight line without touching the
# table (the base front stays behind the table's front edge).
TARGET_MARKER_X = (-0.10, 0.08)
TARGET_MARKER_Y = (0.45, 1.00)
# Margin (px) the target marker's centre keeps from the image border at the start.
MARKER_VIEW_MARGIN = 25.0


def _sample_markers(rng: np.random.Generator, robot: Robot,
                    target: Optional[str] = None) -> Dict[str, np.ndarray]:
    """
    Place the floor markers; ``target`` (a colour) lands where the camera sees it.

    The other markers are distractors beside and behind the robot (seen or not). The
    camera check uses the camera pose of the robot at its start pose (``robot`` after
    ``Robot.reset``), so the draw depends only on the seed.
    """
    markers: Dict[str, np.ndarray] = {}
    if target is not None:
        size = robot.image_size
        for _ in range(1000):
            p = np.array([rng.uniform(*TARGET_MARKER_X),
                          rng.choice([-1.0, 1.0]) * rng.uniform(*TARGET_MARKER_Y)])
            uv = robot.project((p[0], p[1], 0.0))
            if uv is not None and np.all(uv >= MARKER_VIEW_MARGIN) and np.all(
                    uv <= size - MARKER_VIEW_MARGIN):
                markers[target] = p
                break
        else:  # pragma: no cover - about half the area is in view
            raise RuntimeError('no visible place for the target marker')
    while len(markers) < len(MARKER_COLOURS):
        if rng.uniform() < 0.7:
            p = np.array([rng.uniform(-0.5, 0.1), rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.1)])
        else:
            p = np.array([rng.uniform(-1.1, -0.6), rng.uniform(-0.8, 0.8)])
        if all(np.linalg.norm(p - q) > 0.45 for q in markers.values()):
            colour = next(c for c in MARKER_COLOURS if c not in markers)
            markers[colour] = p
    return markers


class TaskEnv:
    """
    A robot plus the active task: seeded resets, control steps, success bookkeeping.

    ``control_period`` must be a whole multiple of the physics timestep (checked here, as
    dm_control checks it), so every command is held for the same number of physics steps.
    """

    def __init__(self, robot: Optional[Robot] = None, control_period: Optional[float] = None):
        self.robot = robot if robot is not None else Robot()
        # Callers pass the configured rate; the default is the schema's control rate.
        if control_period is None:
            control_period = default_period('interpolation_node', 'control_frequency')
        self.control_period = float(control_period)
        self.steps_per_control = self.robot.steps_per(self.control_period)
        self.task: Optional[Task] = None
        self.episode: Optional[Episode] = None

    def reset(self, task: str, seed: int) -> Episode:
        """Start an episode of ``task`` drawn from ``seed`` (same seed, same episode)."""
        if int(seed) < 0:
            raise ValueError(f'seed must be >= 0, found {seed}')
        self.task = make_task(task)
        scene = draw_scene(task, seed)
        rng, instruction, params = scene.rng, scene.instruction, scene.params
        blocks, yaws, bowl = scene.blocks, scene.yaws, scene.bowl
        robot = self.robot
        robot.reset(gripper=self.task.initial_gripper(params))
        markers = _sample_markers(rng, robot, params['colour'] if task == 'drive_to_marker'
                                  else None)
        d = robot.data
        for colour, p in blocks.items():
            qadr = robot.model.joint(f'block_{colour}').qposadr[0]
            yaw = yaws[colour]
            d.qpos[qadr:qadr + 3] = p
            d.qpos[qadr + 3:qadr + 7] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
        d.mocap_pos[robot.model.body('bowl').mocapid[0]] = bowl
        for colour, p in markers.items():
            d.mocap_pos[robot.model.body(f'marker_{colour}').mocapid[0]] = (p[0], p[1], 0.0)
        robot.mujoco.mj_forward(robot.model, d)
        if 'colour' in params and task in ('pick_block', 'place_in_bowl', 'push_block'):
            params['block_start'] = blocks[params['colour']].tolist()
        self.episode = Episode(task=task, seed=int(seed), instruction=instruction,
                               time_limit=self.task.time_limit, params=params,
                               start_time=robot.time)
        return self.episode

    @property
    def elapsed(self) -> float:
        """Seconds since the episode started."""
        return self.robot.time - self.episode.start_time

    @property
    def done(self) -> bool:
        """Return True once the episode succeeded or ran out of time."""
        return self.episode.success or self.elapsed >= self.episode.time_limit - 1e-9

    def update(self) -> bool:
        """Evaluate the success check; success latches for the rest of the episode."""
        if self.episode is not None and not self.episode.success:
            self.episode.success = self.task.check(self.robot, self.episode)
        return self.episode.success

    def apply(self, arm: np.ndarray, base: np.ndarray, gripper: float):
        """Send one command to the robot's controllers."""
        self.robot.set_arm_targets(arm)
        self.robot.set_base_twist(base)
        self.robot.set_gripper(gripper)

    def control_step(self) -> bool:
        """Advance one control period; returns the (latched) success flag."""
        self.robot.step(self.steps_per_control)
        return self.update()

    def target_in_base(self) -> np.ndarray:
        """
        Return the named object's position in the base frame (m), valid flag: [x, y, z, 1].

        [0, 0, 0, 0] when the task names no object (gripper). The head camera rides on the
        base, so this is what the image alone determines (a training target, never an input).
        """
        body = self.task.target_body(self.episode.params)
        if body is None:
            return np.zeros(4)
        odom = self.robot.odometry()
        p = self.robot.body_position(body)
        dx, dy = p[0] - odom.x, p[1] - odom.y
        c, s = math.cos(odom.yaw), math.sin(odom.yaw)
        return np.array([c * dx + s * dy, -s * dx + c * dy, p[2], 1.0])

    def status(self) -> Dict:
        """Return the active episode's status as a JSON-friendly dict."""
        return self.episode.to_dict(self.robot.time)
