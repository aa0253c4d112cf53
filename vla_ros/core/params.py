"""
The parameter schema of every node: one table that declares, documents and defaults them.

Each node declares exactly its table (``nodes.common.declare_all``), with the description,
unit, range and read-only flag shown by ``ros2 param describe``, and builds its frozen,
validated dataclass from the values; ``ControlConfig`` takes its defaults from here too, so
there is no second table to drift. Values several nodes share (the policy rate, the arm
joint names, the target rule) are defined once in ``SHARED`` and set once in
``config/vla_ros.yaml`` under ``/**``. Pure Python: no rclpy.

Paths default to '' (resolved at start-up to the installed package's file).
"""

from dataclasses import dataclass
import math
from typing import Dict, Optional, Tuple

from .action_space import DEFAULT_ARM_JOINTS


class ConfigError(ValueError):
    """A configuration that cannot work: a node's parameter values, a model recipe."""


@dataclass(frozen=True)
class Param:
    """One parameter: name, default, what it means, its unit and range, writable or not."""

    name: str
    default: object
    description: str
    unit: str = ''
    low: Optional[float] = None
    high: Optional[float] = None
    read_only: bool = True
    array: str = ''      # 'string' or 'double' for array parameters

    @property
    def text(self) -> str:
        """Return the description with the unit, as ``ros2 param describe`` shows it."""
        return f'{self.description} [{self.unit}]' if self.unit else self.description


# -- values several nodes share (one definition, one line in the parameters file) ---------
SHARED: Dict[str, Param] = {p.name: p for p in (
    Param('inference_frequency', 5.0, 'Policy rate (inference_node ticks, the detokenizer '
          'and interpolator plan one target per period, sim_node publishes sim/state at it).',
          'Hz', 0.1, 100.0),
    Param('arm_joint_names', list(DEFAULT_ARM_JOINTS), 'The 7 arm joints in action order, '
          'as named in joint_states and the targets.', array='string'),
    Param('gripper_joint_name', 'gripper', 'joint_states entry of the gripper closure (0 '
          'open .. 1 closed).'),
    Param('base_frame_id', 'base_link', 'frame_id of base targets, stamped base commands '
          'and markers.'),
    Param('action_space_file', '', 'Action space YAML (bounds, binning, kinds); empty: '
          'share/vla_ros/config/action_space.yaml. Must match the model.'),
    Param('target_timeout', 1.0, 'Previous commanded target older than this → start from '
          'the measured arm (relative actions and the state input).', 's', 0.01, 60.0),
    Param('max_target_deviation', 0.35, 'Previous target further than this from the '
          'measured arm → start from the measured arm.', 'rad', 0.01, 6.3),
)}


def _shared(*names: str) -> Tuple[Param, ...]:
    return tuple(SHARED[n] for n in names)


SCHEMAS: Dict[str, Tuple[Param, ...]] = {
    'camera_node': (
        Param('output_height', 300, 'Output height (must match the model contract).', 'px',
              1, 4096),
        Param('output_width', 300, 'Output width.', 'px', 1, 4096),
        Param('resize_mode', 'crop', 'crop: centre-crop to the output aspect, then resize; '
              'stretch: resize the whole frame.'),
        Param('expected_frequency', 10.0, 'Nominal camera rate (diagnostics).', 'Hz', 0.1,
              1000.0),
    ),
    'inference_node': (
        Param('model_file_path', '', 'Exported policy ONNX; empty: '
              'share/vla_ros/models/rt1_nano/policy.onnx.'),
        Param('text_encoder_path', '', 'Text encoder ONNX; empty: text_encoder.onnx beside '
              'the policy.'),
        Param('tokenizer_path', '', 'tokenizer.json; empty: beside the policy.'),
        Param('backend', 'onnxruntime', 'onnxruntime, tensorrt or torch.'),
        Param('providers', ['CPUExecutionProvider'], 'ONNX Runtime execution providers in '
              'priority order, e.g. [TensorrtExecutionProvider, CUDAExecutionProvider, '
              'CPUExecutionProvider].', array='string'),
        Param('intra_op_threads', 2, 'CPU threads for one model run.', '', 1, 64),
        Param('require_accelerator', False, 'Fail configure when no GPU provider is really '
              'active.'),
        Param('engine_file_path', '', 'TensorRT engine; empty: cached beside the model, keyed '
              'by model, TensorRT and GPU.'),
        Param('force_engine_update', False, 'Rebuild the TensorRT engine even if cached.'),
        Param('max_image_age', 0.5, 'Newest image older than this (by its stamp) → publish '
              'nothing.', 's', 0.001, 60.0),
        Param('state_timeout', 0.5, 'State input: joint_states older than this → publish '
              'nothing.', 's', 0.01, 10.0),
        Param('instruction_log_chars', 80, 'Longest part of an instruction quoted in the log.',
              'characters', 8, 10000),
        Param('allow_unverified_model', False, 'Load a model that has no manifest.json (its '
              'bytes cannot be checked; logged as a warning). Default: refused in configure.'),
        Param('chunk_execute', 0, 'A model that predicts k steps per frame (action chunks): '
              'publish its first chunk_execute steps and predict again once they have run '
              '(one step per policy period, executed by detokenizer_node); 0: all k. Ignored '
              'for single-step models.', 'steps', 0, 32),
        Param('instruction_grounding', '', 'Hand the policy the trained phrasing an '
              'instruction means (docs/model.md, "Instruction grounding"): sim_tasks (the '
              'templates of the simulated tasks), a YAML/JSON file {task: [template, ...]} of '
              'those tasks, or empty: instructions go to the policy as they are. An '
              'instruction it cannot ground is refused and what the robot did stops.'),
        Param('grounding_min_similarity', 0.65, 'Grounding refuses an instruction whose '
              'nearest trained phrasing is less similar than this (cosine of sentence '
              'vectors).', '', 0.0, 1.0),
    ) + _shared('inference_frequency', 'action_space_file', 'arm_joint_names',
                'gripper_joint_name', 'target_timeout', 'max_target_deviation'),
    'detokenizer_node': (
        Param('state_timeout', 0.5, 'joint_states older than this → relative arm tokens are '
              'rejected.', 's', 0.01, 10.0),
    ) + _shared('action_space_file', 'arm_joint_names', 'base_frame_id', 'inference_frequency',
                'gripper_joint_name', 'target_timeout', 'max_target_deviation'),
    'interpolation_node': (
        Param('control_frequency', 20.0, 'Command rate; a whole multiple of '
              'inference_frequency.', 'Hz', 1.0, 1000.0),
        Param('interpolation', 'linear', 'linear (constant speed through targets) or min_jerk '
              '(comes to rest at every target).'),
        Param('command_timeout', 0.5, 'No target newer than this (by its source stamp) → base '
              'ramps to zero, arm brakes to rest, gripper holds.', 's', 0.01, 10.0),
        Param('future_stamp_tolerance', 0.1, 'Targets stamped up to this far in the future '
              'are executed (clock skew); further ahead, rejected.', 's', 0.0, 10.0),
        Param('state_timeout', 0.5, 'No joint_states newer than this → arm brakes to rest, '
              'base ramps to zero.', 's', 0.01, 10.0),
        Param('clock_timeout', 0.5, 'ROS time (/clock under use_sim_time) not advancing for '
              'this long (steady clock) → base ramps to zero, arm brakes to rest.', 's', 0.01,
              10.0),
        Param('joint_position_min', [-math.pi], 'Lower joint limits, 1 value for all or 7.',
              'rad', array='double'),
        Param('joint_position_max', [math.pi], 'Upper joint limits, 1 or 7 values.', 'rad',
              array='double'),
        Param('joint_velocity_max', [1.5], 'Joint speed limits, 1 or 7 values.', 'rad/s',
              array='double'),
        Param('joint_acceleration_max', [6.0], 'Joint acceleration limits, 1 or 7 values.',
              'rad/s^2', array='double'),
        Param('base_max_velocity', [0.5, 0.5, 0.5], 'vx, vy, wz limits.', 'm/s, m/s, rad/s',
              array='double'),
        Param('base_max_acceleration', [1.0, 1.0, 1.5], 'Base acceleration limits.',
              'm/s^2, m/s^2, rad/s^2', array='double'),
        Param('base_max_deceleration', [2.0, 2.0, 3.0], 'Base deceleration limits.',
              'm/s^2, m/s^2, rad/s^2', array='double'),
        Param('arm_output', 'commands', 'commands: Float64MultiArray on '
              'arm_controller/commands; joint_trajectory: JointTrajectory on '
              'arm_controller/joint_trajectory.'),
        Param('cmd_vel_stamped', True, 'TwistStamped on cmd_vel (Jazzy diff_drive_controller); '
              'false: Twist (Humble-era controllers).'),
        Param('start_enabled', False, "Open the operator's motion gate at start-up (otherwise "
              'call vla/enable); motion still waits for activation.'),
        Param('marker_frequency', 5.0, 'vla/markers rate.', 'Hz', 0.1, 50.0),
    ) + _shared('inference_frequency', 'arm_joint_names', 'base_frame_id'),
    'sim_node': (
        Param('model_file_path', '', 'MJCF of robot and scene; empty: the packaged '
              'vla_ros/sim/assets/robot.xml.'),
        Param('task', 'pick_block', 'Task of the next episode; applied by sim/reset.',
              read_only=False),
        Param('seed', 0, 'Seed of the next episode (same seed, same episode); applied by '
              'sim/reset.', '', 0, 2 ** 31 - 1, read_only=False),
        Param('real_time_factor', 1.0, 'Sim seconds per wall second; above 1 only when the '
              'graph runs on sim time (use_sim_time).', '', 0.01, 100.0),
        Param('publish_frequency', 250.0, 'joint_states and /clock rate; its period must be a '
              'whole number of physics steps.', 'sim Hz', 1.0, 1000.0),
        Param('camera_frequency', 12.5, 'camera/image_raw rate; a whole number of publish '
              'periods.', 'sim Hz', 0.1, 100.0),
        Param('odom_frequency', 50.0, 'odom rate.', 'sim Hz', 0.1, 1000.0),
        Param('status_frequency', 5.0, 'sim/task_status rate.', 'sim Hz', 0.1, 100.0),
        Param('image_size', 300, 'Camera image width and height.', 'px', 16, 2048),
        Param('cmd_vel_timeout', 0.5, 'Base stops when no cmd_vel is newer than this, like '
              'diff_drive_controller.', 'sim s', 0.01, 10.0),
        Param('cmd_vel_stamped', True, 'Subscribe TwistStamped on cmd_vel (false: Twist, '
              'Humble-era controllers).'),
        Param('reset_command_hold', 0.3, 'After a reset, ignore commands for this long so '
              'upstream loops can re-sync to the new joint states.', 'sim s', 0.0, 10.0),
        Param('publish_sim_state', False, 'Publish sim/state (ground truth: episode, joints, '
              'placed bodies) at inference_frequency on the policy grid, for expert_node.'),
        Param('world_frame_id', 'world', 'frame_id of sim/state (the poses are world poses).'),
        Param('camera_frame_id', 'head_camera_optical_frame', 'frame_id of images and '
              'camera_info.'),
        Param('odom_frame_id', 'odom', 'Frame of odom.'),
    ) + _shared('inference_frequency', 'base_frame_id'),
    'expert_node': (
        Param('model_file_path', '', "The simulator's MJCF model (sim_node's); empty: the "
              'shipped robot.'),
        Param('expert', 'phases', "Which expert decides: 'phases' (the phase machine) or "
              "'reactive' (pick, place and push decided from the state alone)."),
    ) + _shared('action_space_file', 'inference_frequency', 'target_timeout',
                'max_target_deviation'),
    'lifecycle_manager': (
        Param('node_names', ['interpolation_node', 'inference_node'], 'Managed nodes in '
              'bring-up order (relative names).', array='string'),
        Param('autostart', True, 'Configure and activate the nodes at start-up (otherwise '
              'call lifecycle_manager/startup).'),
        Param('service_timeout', 60.0, "Wait this long for a node's change_state service.",
              's', 0.1, 3600.0),
        Param('transition_timeout', 900.0, 'Longest one transition may take (a TensorRT '
              'engine build is minutes).', 's', 0.1, 7200.0),
        Param('configure_attempts', 3, 'Configure a node this many times before giving up '
              'bring-up (a failed configure leaves it unconfigured).', '', 1, 1000),
        Param('retry_delay', 5.0, 'Wait between two configure attempts.', 's', 0.0, 3600.0),
    ),
}


def schema(node: str) -> Tuple[Param, ...]:
    """Return the parameters ``node`` declares (KeyError for an unknown node)."""
    return SCHEMAS[node]


def defaults(node: str) -> Dict[str, object]:
    """Return name → default of ``node``'s parameters (arrays copied)."""
    return {p.name: list(p.default) if isinstance(p.default, list) else p.default
            for p in SCHEMAS[node]}


def default_period(node: str, rate: str) -> float:
    """Return the seconds of one period of ``node``'s rate parameter ``rate`` by default."""
    return 1.0 / float(defaults(node)[rate])


# -- inference_node with ``backend: remote``: the policy runs on a `vla-ros serve` server ---
# (vla_ros/runtime/remote.py; docs/remote.md). TLS is on unless remote_insecure is set.
REMOTE: Tuple[Param, ...] = (
    Param('remote_endpoint', '', 'backend remote: host:port of the policy server.'),
    Param('remote_robot_id', 'robot', "backend remote: this robot's id (its queue on the "
          'server; must match its token or client certificate name).'),
    Param('remote_ca_file', '', 'backend remote: CA certificate (PEM) that signed the '
          'server certificate.'),
    Param('remote_cert_file', '', 'backend remote: client certificate (PEM) for mutual TLS; '
          'empty: none.'),
    Param('remote_key_file', '', 'backend remote: private key (PEM) of remote_cert_file.'),
    Param('remote_token_file', '', "backend remote: file holding this robot's bearer token "
          '(`vla-ros serve --new-token`); empty: none.'),
    Param('remote_server_name', '', 'backend remote: name to check in the server '
          'certificate; empty: the endpoint host.'),
    Param('remote_insecure', False, 'backend remote: plaintext, no TLS (trusted networks '
          'only; logged as a warning).'),
    Param('remote_deadline', 0.5, 'backend remote: a reply later than this is not waited '
          'for (counted remote_deadline_exceeded).', 's', 0.01, 10.0),
    Param('remote_connect_timeout', 10.0, 'backend remote: configure fails when the server '
          'has not answered within this.', 's', 0.1, 600.0),
    Param('remote_compression', 'raw', 'backend remote: frame encoding: raw (lossless, '
          '270 kB, fastest), png (lossless, ~60 % of raw, ~10 ms more), jpeg (lossy, ~10 kB; '
          'tokens may differ: docs/remote.md).'),
    Param('remote_jpeg_quality', 90, 'backend remote: JPEG quality.', '', 1, 100),
    Param('remote_max_in_flight', 1, 'backend remote: requests awaiting a reply at once; a '
          'tick beyond this sends nothing (newest frame wins).', '', 1, 16),
    Param('remote_model_id', '', 'backend remote: refuse a server that runs another model '
          '(<config>@sha256:<16 hex>, its log and ModelInfo say it); empty: accept the '
          'model found at configure, and only that one after a reconnect.'),
    Param('remote_reconnect_backoff_max', 5.0, 'backend remote: longest wait between two '
          'reconnection attempts (doubles from 0.2 s).', 's', 0.2, 300.0),
)
SCHEMAS['inference_node'] += REMOTE
