"""
Scripted expert: solves every task through the 11-D RT-1 action space at 5 Hz.

The expert reads privileged simulator state (object and marker poses, the measured tool
pose) and produces exactly what a policy would: absolute joint targets for the 7 arm joints
(from IK along straight Cartesian segments), a base twist in the base frame and a
gripper command. Joint targets are chosen among the values the action tokenizer can
represent (``ArmIK.refine_quantised``), so the 256-bin quantisation costs millimetres, not
centimetres. Each task is a small phase machine that advances on measured progress, so
the expert copes with lag from the interpolator and with blocks that shift when touched.

Once it has closed the gripper on the block it checks, at every step of lifting and
carrying, that the block is still where the fingers hold it (``LOST_GRASP``): when the
block slipped, was never between the fingers, or the fingers closed fully on nothing, it
opens the gripper and starts the grasp again. Its own demonstrations rarely need that; a
learner's do (DAgger), where the gripper closes wherever the learner closed it, and a label
that lifts or carries an empty gripper would teach exactly that.

Settling (``settle``, default on; the recorded datasets' expert): a phase ends when the
waypoint has arrived *and* the measured tool has caught up, and the expert holds still in
between. ``settle=False`` ends place's lift and carry and push's approach when the waypoint
arrives; the descent that follows goes on centring on the same point, so the tasks are
solved as often, a little sooner. It was built to test whether the wait before place's
descent is what cloned policies copy when they hover over the bowl: with a perfect state
(``vla-ros oracle --no-settle``) place succeeds as often either way (docs/model-card.md).
"""

import math
from typing import Optional

import numpy as np

from vla_ros.core.action_space import ActionTokenizer
from vla_ros.core.params import default_period
from vla_ros.sim.ik import ArmIK, tool_down_rotation
from vla_ros.sim.pipeline import Observation
from vla_ros.sim.robot import HOME_ARM, Robot
from vla_ros.sim.tasks import BLOCK_HALF, BOWL_INNER_RADIUS, Episode, TABLE_TOP

# Tool centre point heights relative to the block centre for each phase (m). The finger
# tips are 15 mm below the tool centre point.
PREGRASP_ABOVE = 0.12
GRASP_ABOVE = 0.008
CARRY_Z = 0.58
PUSH_Z = 0.428
# Cartesian speeds (m/s) of the commanded waypoint.
FAST = 0.30
SLOW = 0.12
PUSH_SPEED = 0.08
# A grasped block that moves this far from where it sat in the closed fingers (m), or
# fingers that close on nothing, mean the grasp was lost: open and grasp again.
LOST_GRASP = 0.03
# Gripper closure above this: the fingers closed fully, on nothing.
EMPTY_CLOSURE = 0.97
# A block whose centre is within these of the grasp point (tool centre point, GRASP_ABOVE
# above the block centre) while the fingers are partly closed (closure between HELD_CLOSURE
# and EMPTY_CLOSURE) is held (m).
HELD_XY = 0.025
HELD_Z = 0.025
HELD_CLOSURE = 0.4
# Base driving: proportional gain (1/s), speed cap (m/s) and stop radius (m).
DRIVE_GAIN = 1.2
DRIVE_SPEED = 0.35
DRIVE_STOP = 0.02


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


class ScriptedExpert:
    """Phase-machine expert for the tasks in ``vla_ros.sim.tasks``."""

    def __init__(self, robot: Robot, tokenizer: Optional[ActionTokenizer] = None,
                 period: Optional[float] = None, settle: bool = True):
        """Plan for ``robot``; ``settle`` False: no waits before descents (module docstring)."""
        self.robot = robot
        self.settle = settle
        self.tokenizer = tokenizer
        # Callers pass the configured policy period; the default is the schema's rate.
        self.period = float(period if period is not None
                            else default_period('expert_node', 'inference_frequency'))
        self.ik = ArmIK(robot, rest=HOME_ARM, posture_gain=0.3)
        if tokenizer is not None:
            self._step = tokenizer.space.bin_width[:7]
        self.episode: Optional[Episode] = None

    # -- helpers ------------------------------------------------------------------------
    def _quantise(self, q: np.ndarray) -> np.ndarray:
        full = np.zeros(11)
        full[:7] = q
        return self.tokenizer.detokenize(self.tokenizer.tokenize(full))[:7]

    def reset(self, episode: Episode):
        """Start on a new episode (call after ``TaskEnv.reset``)."""
        self.episode = episode
        self.phase = 'start'
        self.phase_steps = 0
        self.q_solution = self.robot.arm_positions()
        self.q_target = self.q_solution.copy()
        self.waypoint, _ = self.robot.tcp_pose()
        self.gripper = self.robot.gripper_closure() >= 0.5
        self.base = np.zeros(3)
        self.grasp_yaw = None
        self.tcp_offset = np.zeros(3)

    def anchor(self, q_commanded: np.ndarray):
        """Continue from this commanded arm target (DAgger: the learner drove the arm)."""
        odom = self.robot.odometry()
        self.ik.sync_base((odom.x, odom.y, odom.yaw))
        self.q_solution = np.asarray(q_commanded, dtype=float).copy()
        self.waypoint, _ = self.ik.forward(self.q_solution)

    def _goto(self, phase: str):
        self.phase = phase
        self.phase_steps = 0

    def _neutral_yaw(self, xy) -> float:
        # With arm_joint_7 at zero the tool's x axis points back at the shoulder; choosing
        # the symmetric grasp yaw nearest that keeps the wrist far from its limits.
        shoulder = self.robot.data.body('arm_link_1').xpos
        return math.atan2(xy[1] - shoulder[1], xy[0] - shoulder[0]) + math.pi

    def _nearest_yaw(self, yaw: float, symmetry: float, xy) -> float:
        neutral = self._neutral_yaw(xy)
        k = round(_wrap(neutral - yaw) / symmetry)
        return yaw + k * symmetry

    def _move(self, goal: np.ndarray, yaw: float, speed: float, tol: float,
              settle: bool = True, per_axis: bool = False) -> bool:
        """
        Step the waypoint toward ``goal``; True once commanded and measured are there.

        ``settle`` False: True once the commanded waypoint is there (the arm may lag).
        ``per_axis``: limit each axis's step to ``speed`` on its own, not the step's length.
        """
        delta = goal - self.waypoint
        dist = np.linalg.norm(delta)
        limit = speed * self.period
        if per_axis:
            self.waypoint = self.waypoint + np.clip(delta, -limit, limit)
            dist = float(np.max(np.abs(delta)))
        else:
            self.waypoint = (goal.copy() if dist <= limit
                             else self.waypoint + delta * (limit / dist))
        rot = tool_down_rotation(yaw)
        odom = self.robot.odometry()
        self.ik.sync_base((odom.x, odom.y, odom.yaw))
        result = self.ik.solve(self.waypoint, rot, self.q_solution)
        self.q_solution = result.q
        if self.tokenizer is not None:
            self.q_target = self.ik.refine_quantised(result.q, self.waypoint, rot,
                                                     self._quantise, self._step)
        else:
            self.q_target = result.q
        measured, _ = self.robot.tcp_pose()
        return bool(dist <= limit and (not settle or np.linalg.norm(measured - goal) <= tol))

    def _block(self) -> np.ndarray:
        return self.robot.body_position(f'block_{self.episode.params["colour"]}')

    def _block_yaw(self) -> float:
        # The yaw of a horizontal face normal: a block that fell may rest on any face, so
        # the axis nearest the vertical is skipped (the first one left is as good as the
        # other, the grasp yaw has a quarter-turn symmetry).
        axes = self.robot.data.body(f'block_{self.episode.params["colour"]}').xmat.reshape(3, 3)
        up = int(np.argmax(np.abs(axes[2])))
        side = axes[:, 1 if up == 0 else 0]
        return math.atan2(side[1], side[0])

    def _action(self) -> np.ndarray:
        a = np.zeros(11)
        a[:7] = self.q_target
        a[7:10] = self.base
        a[10] = 1.0 if self.gripper else 0.0
        return a

    # -- the policy ---------------------------------------------------------------------
    def act(self) -> np.ndarray:
        """Return the next 11-D action (call once per policy period)."""
        if self.episode is None:
            raise RuntimeError('call reset(episode) before act()')
        task = self.episode.task
        self.phase_steps += 1
        getattr(self, f'_act_{task}')()
        return self._action()

    def _grasp_sequence(self, after: str) -> bool:
        """Shared pick phases; returns True once the block is grasped and lifted a little."""
        block = self._block()
        if self.phase in ('start', 'pregrasp', 'descend') and self._holding():
            # DAgger: the learner grasped the block before the expert's own phases would
            # have. Labelling "open and descend" there teaches the policy to drop it; the
            # expert carries on from the grasp instead (the clean expert's fingers are open
            # in these phases, so this never fires for it).
            tcp, rot = self.robot.tcp_pose()
            self.gripper = True
            self.tcp_offset = block - tcp
            self.grasp_yaw = math.atan2(rot[1, 0], rot[0, 0])  # keep the learner's grasp
            self._goto(after)
            return False
        if self.phase == 'start':
            self.grasp_yaw = self._nearest_yaw(self._block_yaw(), math.pi / 2, block)
            self.gripper = False
            self._goto('pregrasp')
        if self.phase == 'pregrasp':
            goal = block + (0.0, 0.0, PREGRASP_ABOVE)
            # Re-aim at the block while approaching: it may have been nudged.
            self.grasp_yaw = self._nearest_yaw(self._block_yaw(), math.pi / 2, block)
            if self._move(goal, self.grasp_yaw, FAST, 0.02):
                self._goto('descend')
        elif self.phase == 'descend':
            goal = block + (0.0, 0.0, GRASP_ABOVE)
            if self._move(goal, self.grasp_yaw, SLOW, 0.008) or self.phase_steps > 20:
                self._goto('close')
        elif self.phase == 'close':
            self.gripper = True
            if self.phase_steps >= 3:
                self.tcp_offset = block - self.robot.tcp_pose()[0]
                self._goto(after)
                return True
        return False

    def _holding(self) -> bool:
        """Return True when the block sits between partly closed fingers."""
        return self._held_within(HELD_XY, HELD_Z)

    def _held_within(self, max_xy: float, max_z: float) -> bool:
        """
        Return True for partly closed fingers and the block near the grasp point.

        ``max_xy``: how far from the tool's axis, ``max_z``: from the grasp height (m).
        """
        offset = self._block() - self.robot.tcp_pose()[0]
        closure = self.robot.gripper_closure()
        return bool(HELD_CLOSURE <= closure <= EMPTY_CLOSURE
                    and np.linalg.norm(offset[:2]) <= max_xy
                    and abs(offset[2] + GRASP_ABOVE) <= max_z)

    def _grasp_again_if_lost(self, holding_phases) -> bool:
        """In a phase that holds the block: if it left the fingers, start the grasp again."""
        if self.phase not in holding_phases:
            return False
        offset = self._block() - self.robot.tcp_pose()[0]
        empty = self.robot.gripper_closure() > EMPTY_CLOSURE
        if np.linalg.norm(offset - self.tcp_offset) <= LOST_GRASP and not empty:
            return False
        self.gripper = False
        self._goto('start')
        self._grasp_sequence('lift')
        return True

    def _act_pick_block(self):
        if self._grasp_sequence('lift') or self._grasp_again_if_lost(('lift',)):
            return
        if self.phase == 'lift':
            goal = self.waypoint.copy()
            goal[2] = self.episode.params['block_start'][2] + 0.16
            self._move(goal, self.grasp_yaw, SLOW, 0.01)

    def _act_place_in_bowl(self):
        if (self._grasp_sequence('lift')
                or self._grasp_again_if_lost(('lift', 'carry', 'lower'))):
            return
        bowl = self.robot.body_position('bowl')
        if self.phase == 'lift':
            goal = self.waypoint.copy()
            goal[2] = CARRY_Z
            if self._move(goal, self.grasp_yaw, SLOW, 0.03, self.settle):
                self._goto('carry')
        elif self.phase == 'carry':
            # Aim the block, not the tool, at the bowl's centre (the grasp is rarely centred).
            offset = self._block() - self.robot.tcp_pose()[0]
            goal = np.array([bowl[0] - offset[0], bowl[1] - offset[1], CARRY_Z])
            if self._move(goal, self.grasp_yaw, FAST, 0.015, self.settle):
                self._goto('lower')
        elif self.phase == 'lower':
            offset = self._block() - self.robot.tcp_pose()[0]
            goal = np.array([bowl[0] - offset[0], bowl[1] - offset[1], bowl[2] + 0.10])
            if self._move(goal, self.grasp_yaw, SLOW, 0.015) or self.phase_steps > 15:
                self._goto('release')
        elif self.phase == 'release':
            self.gripper = False
            if self.phase_steps >= 3:
                self._goto('retreat')
        elif self.phase == 'retreat':
            goal = self.waypoint.copy()
            goal[2] = CARRY_Z + 0.04
            self._move(goal, self.grasp_yaw, SLOW, 0.02)

    def _act_push_block(self):
        sign = self.episode.params['sign']
        start = np.asarray(self.episode.params['block_start'])
        block = self._block()
        # Push with the closed fingers' broad face: tool x along the push direction.
        if self.phase == 'start':
            self.gripper = True
            self.grasp_yaw = self._nearest_yaw(math.pi / 2, math.pi, block)
            self._goto('above')
        behind = BLOCK_HALF * math.sqrt(2.0) + 0.011 + 0.02
        if self.phase == 'above':
            goal = np.array([block[0], block[1] - sign * behind, PUSH_Z + 0.09])
            if self._move(goal, self.grasp_yaw, FAST, 0.02, self.settle):
                self._goto('lower')
        elif self.phase == 'lower':
            goal = np.array([block[0], block[1] - sign * behind, PUSH_Z])
            if self._move(goal, self.grasp_yaw, SLOW, 0.01) or self.phase_steps > 15:
                self._goto('push')
        elif self.phase == 'push':
            moved = sign * (block[1] - start[1])
            # Keep the tool lined up with the block's centre as it slides.
            goal = np.array([block[0], start[1] + sign * (0.125 - BLOCK_HALF - 0.011),
                             PUSH_Z])
            reached = self._move(goal, self.grasp_yaw, PUSH_SPEED, 0.01)
            if moved >= 0.115 or (reached and self.phase_steps > 5):
                self._goto('retreat')
        elif self.phase == 'retreat':
            goal = self.waypoint.copy()
            goal[2] = PUSH_Z + 0.1
            self._move(goal, self.grasp_yaw, SLOW, 0.02)

    def _act_drive_to_marker(self):
        marker = self.robot.body_position(f'marker_{self.episode.params["colour"]}')
        odom = self.robot.odometry()
        dx, dy = marker[0] - odom.x, marker[1] - odom.y
        # World error into the base frame (the action's base twist is base-frame).
        c, s = math.cos(odom.yaw), math.sin(odom.yaw)
        ex, ey = c * dx + s * dy, -s * dx + c * dy
        dist = math.hypot(ex, ey)
        if dist < DRIVE_STOP:
            self.base = np.zeros(3)
        else:
            speed = min(DRIVE_SPEED, DRIVE_GAIN * dist)
            self.base = np.array([ex / dist * speed, ey / dist * speed, 0.0])
        self.q_target = self._hold_arm()

    def _act_gripper(self):
        self.gripper = bool(self.episode.params['close'])
        self.q_target = self._hold_arm()

    def _hold_arm(self) -> np.ndarray:
        q = self.q_solution if self.phase_steps > 1 else self.robot.arm_positions()
        self.q_solution = q
        return self._quantise(q) if self.tokenizer is not None else q.copy()


# Reactive expert (``ReactiveExpert``): xy error under which a descent onto the block
# starts, and under which one that started goes on (m); distance of the commanded tool from
# the grasp point at which the gripper closes (m); xy error over the bowl under which the
# lowering to the release starts, the one under which a lowering that started goes on and
# releases, and the height above the release height within which it releases (m). The start
# is tight (0.8 cm; success allows the block 6.8 cm from the bowl's centre) so that a learner
# that opens a little off still lands the block: with 1.5 cm, policies trained on it
# released on the rim. The wider keep lets spaces with coarse arm bins (absolute joints)
# finish the lowering.
REACT_ALIGN = 0.010
REACT_KEEP = 0.020
REACT_AT_GRASP = 0.008
REACT_RELEASE_XY = 0.008
REACT_RELEASE_KEEP = 0.015
REACT_RELEASE_DZ = 0.02
# Place with a low carry (``place_carry='low'``): the block is carried this far above the
# release height (10 cm over the bowl's base: its bottom 8-9 cm over the table, clear of
# the rim and the other blocks) and released as soon as it is over the bowl, no lowering.
# Within ``REACT_LOW_APPROACH`` of the point over the bowl the carry slows from FAST to SLOW
# (2.4 cm a decision, not 6): a policy trained on the fast carry ran past the bowl within
# 3-4 cm and opened late, 14-15 cm beyond it.
REACT_LOW_CARRY_DZ = 0.015
REACT_LOW_APPROACH = 0.10
# Place with a carry limited per axis (``place_carry='axes'``): the high carry, each of x and y
# stepping up to FAST a decision on its own (a diagonal carry moves faster) rather than the
# step along the straight line. The policy's x and y tokens are decoded independently
# (argmax per dimension): a straight-line step spreads each axis over every value from 0
# to FAST with the direction, an axis-limited one puts most carry labels at +-FAST, a
# sign per axis, until the last step.
PLACE_CARRIES = ('high', 'low', 'axes')
# Push: how far the tool's end pushes the block (m), and the block travel after which the
# push is over (m); the task needs 10 cm, so a learner that stops a few cm early still
# passes (with 12.5 / 11.5 cm, policies stopped at 6–9 cm).
REACT_PUSH_TRAVEL = 0.155
REACT_PUSH_DONE = 0.145
# Gripper closure above which fingers away from the grasp point count as closing on nothing.
REACT_CLOSING = 0.15
# A block off the table between partly closed fingers counts as held up to this far from
# the tool's axis and from the grasp height (m). The centred test (``HELD_XY``, ``HELD_Z``)
# fits the expert's own grasps; a learner's grasps land up to ~2.6 cm off centre or ~4 cm
# deep in the fingers, and with the centred test the expert labelled those lifted blocks
# "not held": open the fingers, in mid-air.
REACT_HELD_XY_LIFTED = 0.045
REACT_HELD_Z_LIFTED = 0.05


class ReactiveExpert(ScriptedExpert):
    """
    The pick, place and push experts as functions of what is observable now.

    ``ScriptedExpert`` is a phase machine: its label depends on its own history (the phase,
    timers, the waits for the arm). Labelling a learner's states (DAgger) with it gives
    labels that the state does not determine, and with a perfect state (``vla-ros oracle
    --dagger-rounds``) its DAgger rounds made every task worse. This expert decides from the
    previous commanded target (the policy's state input, given to ``observe`` every tick),
    the measured gripper closure and the object poses, with no memory:

    - not holding the block: fingers closed on nothing → open and rise; the commanded tool
      at the grasp point (or closing there) → close; within ``REACT_ALIGN`` over the block
      (``REACT_KEEP`` once below the pre-grasp height) → descend; low and off the block →
      rise; else → go to the pre-grasp point;
    - pick, holding: lift;
    - place, holding: below carry height and off the bowl → lift; off the bowl → carry;
      within ``REACT_RELEASE_XY`` over it (``REACT_RELEASE_KEEP`` once below carry height)
      → lower; there at the release height → open. Block in the bowl and released → retreat.
      With ``place_carry`` 'axes' the carry's step is limited per axis
      (``PLACE_CARRIES``). With ``place_carry`` 'low' the carry height is the release
      height, the carry slows within ``REACT_LOW_APPROACH`` of the bowl, over the bowl →
      open;
    - push: lined up behind the block at push height → push on to ``REACT_PUSH_TRAVEL``;
      at the point behind it → lower; low elsewhere → rise; else → go above the point
      behind it; moved ``REACT_PUSH_DONE`` → retreat.

    Phases are named as ``ScriptedExpert``'s (the noise of ``vla-ros collect --arm-noise``
    spares the same ones). Drive and gripper tasks are the phase machine's (they have no
    hidden phase).
    """

    def __init__(self, robot: Robot, tokenizer: Optional[ActionTokenizer] = None,
                 period: Optional[float] = None, release_xy: float = REACT_RELEASE_XY,
                 place_carry: str = 'high'):
        """
        Plan for ``robot`` (``ScriptedExpert``'s arguments).

        ``release_xy`` (m): how near the point over the bowl the lowering to the release
        starts (``REACT_RELEASE_XY``); the lowering goes on up to 7 mm farther
        (``REACT_RELEASE_KEEP`` at least). A wider zone labels a learner's states: one that
        cannot aim within 8 mm otherwise gets "move closer" forever (``vla-ros collect
        --release-xy``). ``place_carry``: 'high' carries the block at ``CARRY_Z`` and lowers
        it over the bowl; 'low' carries it at the release height and opens within
        ``release_xy`` of the point over the bowl; 'axes' is 'high' with the carry's step
        limited per axis (``vla-ros collect --place-carry``).
        """
        super().__init__(robot, tokenizer, period)
        if not 0.0 < release_xy < BOWL_INNER_RADIUS - 0.03:
            raise ValueError(f'release_xy must be in (0, {BOWL_INNER_RADIUS - 0.03:.3f}) m '
                             f'(the block must land in the bowl), got {release_xy}')
        if place_carry not in PLACE_CARRIES:
            raise ValueError(f'place_carry must be one of {", ".join(PLACE_CARRIES)}, got '
                             f'{place_carry!r}')
        self.release_xy = float(release_xy)
        self.place_carry = place_carry
        self.release_keep = max(REACT_RELEASE_KEEP, self.release_xy + 0.007)
        # Where the place expert believes the bowl is, relative to where it is (m, world):
        # zero but for the misled first attempt of ``vla-ros collect --place-miss``.
        self.bowl_offset = np.zeros(3)

    def observe(self, state: np.ndarray):
        """Take the previous commanded 11-D target (the policy's state input) as given."""
        self.anchor(state[:7])
        self.gripper = bool(state[10] >= 0.5)

    def act(self) -> np.ndarray:
        """Return the next 11-D action; call ``observe`` first."""
        if self.episode is None:
            raise RuntimeError('call reset(episode) before act()')
        self.phase_steps += 1
        task = self.episode.task
        prefix = '_react_' if task in ('pick_block', 'place_in_bowl', 'push_block') else '_act_'
        getattr(self, prefix + task)()
        return self._action()

    def _enter(self, phase: str):
        if phase != self.phase:
            self._goto(phase)

    def _holding(self) -> bool:
        """Apply the centred test on the table and the wider one once the block is lifted."""
        lifted = self._block()[2] > TABLE_TOP + BLOCK_HALF + 0.01
        if lifted:
            return self._held_within(REACT_HELD_XY_LIFTED, REACT_HELD_Z_LIFTED)
        return self._held_within(HELD_XY, HELD_Z)

    def _commanded_yaw(self) -> float:
        _, rot = self.ik.forward(self.q_solution)
        return math.atan2(rot[1, 0], rot[0, 0])

    def _yaw_near(self, yaw: float, symmetry: float, reference: float) -> float:
        return yaw + round(_wrap(reference - yaw) / symmetry) * symmetry

    def _react_reach(self):
        """Not holding the block: approach, descend and close."""
        block = self._block()
        here = self.waypoint
        pregrasp = block + (0.0, 0.0, PREGRASP_ABOVE)
        grasp = block + (0.0, 0.0, GRASP_ABOVE)
        error = float(np.linalg.norm(here[:2] - block[:2]))
        low = here[2] < pregrasp[2] - 0.02
        at_grasp = error < REACT_KEEP and here[2] < grasp[2] + 0.015
        closure = self.robot.gripper_closure()
        if error < REACT_KEEP:  # on the block: turn the least way to one of its faces
            yaw = self._yaw_near(self._block_yaw(), math.pi / 2, self._commanded_yaw())
        else:
            yaw = self._nearest_yaw(self._block_yaw(), math.pi / 2, block)
        self.grasp_yaw = yaw
        if closure > EMPTY_CLOSURE or (closure > REACT_CLOSING and not at_grasp):
            self.gripper = False
            self._enter('open')
            goal = here.copy()
            goal[2] = max(here[2], pregrasp[2])
            self._move(goal, self._commanded_yaw(), SLOW, 0.02, settle=False)
        elif np.linalg.norm(here - grasp) <= REACT_AT_GRASP or (self.gripper and at_grasp):
            self.gripper = True
            self._enter('close')
            self._move(grasp, yaw, SLOW, 0.01, settle=False)
        elif error < REACT_ALIGN or (low and error < REACT_KEEP):
            self.gripper = False
            self._enter('descend')
            self._move(grasp, yaw, SLOW, 0.008, settle=False)
        elif low:
            self.gripper = False
            self._enter('pregrasp')
            goal = here.copy()
            goal[2] = pregrasp[2]
            self._move(goal, yaw, SLOW, 0.02, settle=False)
        else:
            self.gripper = False
            self._enter('pregrasp')
            self._move(pregrasp, yaw, FAST, 0.02, settle=False)

    def _react_pick_block(self):
        if not self._holding():
            self._react_reach()
            return
        self.gripper = True
        self._enter('lift')
        goal = self.waypoint.copy()
        goal[2] = self.episode.params['block_start'][2] + 0.16
        self._move(goal, self._commanded_yaw(), SLOW, 0.01, settle=False)

    def _react_place_in_bowl(self):
        bowl = self.robot.body_position('bowl') + self.bowl_offset
        block = self._block()
        here = self.waypoint
        yaw = self._commanded_yaw()
        holding = self._holding()
        in_bowl = (np.linalg.norm(block[:2] - bowl[:2]) < BOWL_INNER_RADIUS - 0.015
                   and block[2] < bowl[2] + 0.06)
        if in_bowl and not holding:
            self.gripper = False
            self._enter('retreat')
            goal = here.copy()
            goal[2] = CARRY_Z + 0.04
            self._move(goal, yaw, SLOW, 0.02, settle=False)
            return
        if not holding:
            self._react_reach()
            return
        self.gripper = True
        # Aim the block, not the tool, at the bowl's centre (the grasp is rarely centred).
        offset = block - self.robot.tcp_pose()[0]
        aim = bowl[:2] - offset[:2]
        error = float(np.linalg.norm(here[:2] - aim))
        release = np.array([aim[0], aim[1], bowl[2] + 0.10])
        if self.place_carry == 'low':
            carry = release[2] + REACT_LOW_CARRY_DZ
            if here[2] < carry - 0.03:
                self._enter('lift')
                goal = here.copy()
                goal[2] = carry
                self._move(goal, yaw, SLOW, 0.03, settle=False)
                return
            over = error <= self.release_xy
            self.gripper = not over
            self._enter('release' if over else 'carry')
            speed = SLOW if error <= REACT_LOW_APPROACH else FAST
            self._move(np.array([aim[0], aim[1], carry]), yaw, speed, 0.015, settle=False)
            return
        lowering = here[2] < CARRY_Z - 0.01 and error <= self.release_keep
        if error <= self.release_xy or lowering:
            if here[2] <= release[2] + REACT_RELEASE_DZ:
                self.gripper = False
                self._enter('release')
            else:
                self._enter('lower')
            self._move(release, yaw, SLOW, 0.015, settle=False)
        elif here[2] < CARRY_Z - 0.03:
            self._enter('lift')
            goal = here.copy()
            goal[2] = CARRY_Z
            self._move(goal, yaw, SLOW, 0.03, settle=False)
        else:
            self._enter('carry')
            self._move(np.array([aim[0], aim[1], CARRY_Z]), yaw, FAST, 0.015, settle=False,
                       per_axis=self.place_carry == 'axes')

    def _react_push_block(self):
        sign = self.episode.params['sign']
        start = np.asarray(self.episode.params['block_start'])
        block = self._block()
        here = self.waypoint
        self.gripper = True
        yaw = self._nearest_yaw(math.pi / 2, math.pi, start)
        behind = BLOCK_HALF * math.sqrt(2.0) + 0.011 + 0.02
        moved = sign * (block[1] - start[1])
        end_y = start[1] + sign * (REACT_PUSH_TRAVEL - BLOCK_HALF - 0.011)
        point = np.array([block[0], block[1] - sign * behind, PUSH_Z])
        gap = sign * (block[1] - here[1])
        lined = abs(here[0] - block[0]) < 0.015 and 0.0 < gap < behind + 0.015
        if moved >= REACT_PUSH_DONE or (moved > REACT_PUSH_DONE - 0.025
                                        and sign * (here[1] - end_y) >= -0.002):
            self._enter('retreat')
            goal = here.copy()
            goal[2] = PUSH_Z + 0.1
            self._move(goal, yaw, SLOW, 0.02, settle=False)
        elif lined and here[2] < PUSH_Z + 0.015:
            self._enter('push')
            self._move(np.array([block[0], end_y, PUSH_Z]), yaw, PUSH_SPEED, 0.01,
                       settle=False)
        elif np.linalg.norm(here[:2] - point[:2]) < 0.012 or (lined and here[2] < PUSH_Z + 0.10):
            self._enter('lower')
            self._move(point, yaw, SLOW, 0.01, settle=False)
        elif here[2] < PUSH_Z + 0.07:
            self._enter('above')
            goal = here.copy()
            goal[2] = PUSH_Z + 0.09
            self._move(goal, yaw, SLOW, 0.02, settle=False)
        else:
            self._enter('above')
            self._move(point + (0.0, 0.0, 0.09), yaw, FAST, 0.02, settle=False)


# ``ExpertDecider``'s experts: the phase machine (the recorded datasets') and the reactive one.
EXPERT_KINDS = ('phases', 'reactive')


class ExpertDecider:
    """The scripted expert as a token source: absolute targets → action-space labels."""

    def __init__(self, robot: Robot, tokenizer: ActionTokenizer,
                 period: Optional[float] = None, lead_limit: Optional[float] = None,
                 settle: bool = True, kind: str = 'phases',
                 release_xy: Optional[float] = None, place_carry: str = 'high'):
        """
        Wrap an expert of ``kind`` (``EXPERT_KINDS``) for ``robot``.

        ``lead_limit`` (rad, relative arm spaces only): keep each arm target within this of
        the measured joint, so the previous target never strays far enough from the arm for
        the composer to fall back to the measured arm (core/targets.py). A decider in another
        process than the detokenizer needs it: the two judge that fallback on measurements a
        few milliseconds apart and would otherwise disagree near the threshold.
        ``settle``: ``ScriptedExpert``'s (module docstring). ``kind`` 'reactive': the
        ``ReactiveExpert``, given the observation's commanded target every tick;
        ``release_xy``: its release zone (None: ``REACT_RELEASE_XY``; reactive only);
        ``place_carry``: its place carry (``PLACE_CARRIES``; ``ReactiveExpert``).
        """
        if kind not in EXPERT_KINDS:
            raise ValueError(f'expert kind must be one of {", ".join(EXPERT_KINDS)}, got '
                             f'{kind!r}')
        if (release_xy is not None or place_carry != 'high') and kind != 'reactive':
            raise ValueError('release_xy and place_carry apply to the reactive expert only '
                             f'(expert kind {kind!r})')
        space = tokenizer.space
        self.kind = kind
        # Absolute joint targets are snapped to representable bins; deltas need no snapping
        # (they are relative to the exact previous command, quantisation never accumulates).
        quantiser = None if space.relative_arm else tokenizer
        if kind == 'reactive':
            self.expert = ReactiveExpert(robot, quantiser, period,
                                         REACT_RELEASE_XY if release_xy is None else release_xy,
                                         place_carry)
        else:
            self.expert = ScriptedExpert(robot, quantiser, period, settle)
        self.tokenizer = tokenizer
        self.lead_limit = lead_limit
        self.last_values: Optional[np.ndarray] = None
        self.kinematics = None
        if space.tool_arm:  # tool-delta labels: FK of the previous and the next target
            from vla_ros.core.kinematics import default_kinematics
            self.kinematics = default_kinematics()

    def reset(self, episode):
        """Start on a new episode."""
        self.expert.reset(episode)

    def __call__(self, obs: Observation) -> np.ndarray:
        """Tokens of the expert's next action relative to the observation's state."""
        if self.kind == 'reactive':
            self.expert.observe(obs.state)
        target = self.expert.act()
        space = self.tokenizer.space
        if self.lead_limit is not None and space.relative_arm:
            measured = np.asarray(obs.joint_state[:7], dtype=np.float64)
            target = target.copy()
            target[:7] = np.clip(target[:7], measured - self.lead_limit,
                                 measured + self.lead_limit)
        # Clipped to the bounds, as tokenize clips: the recorded values are what the
        # tokens mean (a big wrist turn takes several steps of +-0.3 rad).
        self.last_values = np.clip(space.relative_labels(target, obs.state[:7],
                                                         self.kinematics),
                                   space.low, space.high)
        return self.tokenizer.tokenize(self.last_values)
