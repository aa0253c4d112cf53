"""
inference_node: newest vla/image + latched vla/instruction → vla/action_tokens at 5 Hz.

The policy runs on a 5 Hz timer. The image callback only keeps the newest message and the
instruction callback encodes a new instruction once, so the model never waits behind
image work and never re-encodes text per frame. No fresh image or no instruction → nothing
is published and diagnostics say why. With ``instruction_grounding`` set, a new instruction
is first grounded (``runtime/grounding.py``): the policy reads the trained phrasing it
means, and one that names no trained task is refused and clears the current instruction.

A model with a ``state`` input (the shipped one) also gets the previous commanded 11-D
target: the last target detokenizer_node published (``vla/target``, one ActionTarget), or
the measured arm from ``joint_states`` when it is older than
``target_timeout`` or far from the measured arm — the same rule the detokenizer applies
(``core/targets.py``), and the measured arm while ``vla/motion_enabled`` says the arm is
held. No recent joint_states → nothing is published.

A managed (lifecycle) node, brought up by lifecycle_manager: ``configure`` loads the model
and checks its bytes against ``manifest.json`` (and builds a TensorRT engine, minutes on an
Orin); a model without a manifest is refused unless ``allow_unverified_model`` is set. A
model that fails leaves the node alive and unconfigured, the error (naming the file and the
hashes) logged and on /diagnostics (level ERROR), so lifecycle_manager can report it and
try again. ``activate`` starts the policy on the 5 Hz timer (which keeps its start-up grid);
only an active node publishes. ``cleanup`` and ``shutdown`` release the model and the
endpoints; a request the current state cannot take is refused (``nodes/managed.py``).

A model that predicts k steps per frame (action chunks) publishes the first
``chunk_execute`` steps (0: all k) in one ActionTokens stamped with the frame, then lets
that many policy ticks pass before it predicts again: detokenizer_node executes one step
per tick, and the next prediction sees the target of the chunk's last step as its state.
When ``vla/motion_enabled`` changes (the gate opens at an episode's start, closes on an
e-stop) the wait ends: detokenizer_node drops the steps left, and the node predicts afresh.
With the remote backend a served chunk is published when its reply arrives (between two
ticks), so one more tick passes before the next frame is sent: the chunk's last step is
then due (and its target observed as the next state) before the request leaves.

Length (over 300 lines): the node wiring and its lifecycle transitions; the policy itself
is runtime/policy.py.
"""

from dataclasses import dataclass
import os
import threading
from typing import Optional, Tuple

import numpy as np
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from vla_ros_interfaces.msg import ActionTarget, ActionTokens

from .common import (COMMAND_QOS, ConfigError, declare_all, Diagnostics, exclusive_group,
                     exit_with, LATCHED_QOS, LATEST_IMAGE_QOS, now_s, run, SENSOR_QOS)
from .managed import ManagedNode
from ..conversions import (image_to_rgb8, joint_positions, msg_to_target, time_to_ns,
                           tokens_to_msg)
from ..core.action_space import (ActionSpace, ActionSpaceError, check_arm_joint_names,
                                 NUM_DIMENSIONS)
from ..core.image import ImageError
from ..core.model_contract import ContractError, IMAGE_SIZE
from ..core.stats import Freshness, RateMonitor, WindowStats
from ..core.targets import ComposerConfig, TargetComposer
from ..paths import default_action_space_file, default_model_dir
from ..runtime import BackendError, BackendOptions, BACKENDS
from ..runtime.grounding import Grounding, grounding_from_parameter, GroundingError
from ..runtime.policy import Policy, PolicyFiles
from ..runtime.remote import REMOTE_BACKEND, RemoteOptions, RemotePolicy
from ..runtime.verify import unverified_files


@dataclass(frozen=True)
class InferenceParams:
    """Validated parameters of inference_node."""

    model_file_path: str
    text_encoder_path: str
    tokenizer_path: str
    action_space_file: str
    backend: str
    providers: Tuple[str, ...]
    intra_op_threads: int
    require_accelerator: bool
    engine_file_path: str
    force_engine_update: bool
    inference_frequency: float
    max_image_age: float
    arm_joint_names: Tuple[str, ...]
    gripper_joint_name: str
    target_timeout: float
    max_target_deviation: float
    state_timeout: float
    instruction_log_chars: int
    allow_unverified_model: bool
    chunk_execute: int
    instruction_grounding: str
    grounding_min_similarity: float

    def __post_init__(self):
        try:
            check_arm_joint_names(self.arm_joint_names)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        remote = self.backend == REMOTE_BACKEND  # the model is the server's (remote_*)
        if not remote and not self.model_file_path:
            raise ConfigError('model_file_path is empty: set it to an exported policy.onnx')
        if not remote and not os.path.isfile(self.model_file_path):
            raise ConfigError(f'model_file_path {self.model_file_path!r} does not exist; run '
                              '`make models` or `vla-ros export --config tiny --out DIR`')
        if self.backend not in BACKENDS + (REMOTE_BACKEND,):
            raise ConfigError(f'backend must be one of {BACKENDS + (REMOTE_BACKEND,)}, found '
                              f'{self.backend!r}')
        if not self.providers:
            raise ConfigError('providers is empty: list execution providers explicitly')
        if not self.max_image_age > 0:
            raise ConfigError(f'max_image_age must be > 0 s, found {self.max_image_age}')
        if self.instruction_grounding and remote:
            raise ConfigError('instruction_grounding needs the text encoder on this robot; '
                              'with backend remote the server encodes instructions')


class InferenceNode(ManagedNode):
    """Runs the RT-1 policy on the newest image."""

    def __init__(self):
        super().__init__('inference_node')
        values = declare_all(self, 'inference_node')
        self.remote_options = RemoteOptions.take(values)  # the remote_* parameters
        values['model_file_path'] = values['model_file_path'] or os.path.join(
            default_model_dir(), 'policy.onnx')
        values['action_space_file'] = values['action_space_file'] or default_action_space_file()
        for key in ('providers', 'arm_joint_names'):
            values[key] = tuple(values[key])
        p = self.params = InferenceParams(**values)
        self.policy: Optional[Policy] = None
        self.grounding: Optional[Grounding] = None
        self.composer: Optional[TargetComposer] = None
        self._active = False
        self._chunk_publish, self._chunk_wait = 1, 0  # steps per prediction, ticks to let pass
        self._endpoints = []
        self._pub = None
        self._lock = threading.Lock()
        self._image: Optional[Image] = None
        self._instruction: Optional[str] = None  # what the policy reads (grounded)
        self._said: Optional[str] = None  # what vla/instruction said
        self._measured: Optional[np.ndarray] = None
        self._measured_at = -1e18
        self._gripper = 0.0
        self.diag = Diagnostics(self)
        self.diag.reason = 'unconfigured: waiting for configure (lifecycle_manager)'
        self._rate = RateMonitor(p.inference_frequency)
        self._image_age = Freshness(p.max_image_age)
        self._model_ms = WindowStats(500)
        self._age_ms = WindowStats(500)
        self._inputs = exclusive_group()
        self.create_timer(1.0, self._report, callback_group=self._inputs)
        # The policy timer runs from start-up, so its ticks keep one grid (sim-time replays
        # are exact), and does nothing until the node is activated.
        self.create_timer(1.0 / p.inference_frequency, self._tick,
                          callback_group=exclusive_group())

    # -- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        """Load and verify the model (and build a TensorRT engine): the slow part."""
        p = self.params
        try:
            space = ActionSpace.from_yaml(p.action_space_file)
            options = BackendOptions(
                model_file_path=p.model_file_path, providers=p.providers,
                intra_op_threads=p.intra_op_threads, require_accelerator=p.require_accelerator,
                engine_file_path=p.engine_file_path, force_engine_update=p.force_engine_update,
                require_manifest=not p.allow_unverified_model)
            files = PolicyFiles.from_paths(p.model_file_path, p.text_encoder_path,
                                           p.tokenizer_path)
            self.policy = (self._connect_remote(space) if p.backend == REMOTE_BACKEND
                           else Policy(files, space, p.backend, options, allow_chunks=True))
            k = getattr(self.policy, 'chunk_steps', 1)
            if k > 1 and not p.chunk_execute <= k:
                raise ValueError(f'chunk_execute {p.chunk_execute} is more than the model '
                                 f'predicts ({k} steps per frame)')
            self._chunk_publish = (p.chunk_execute or k) if k > 1 else 1
            self._chunk_wait = 0
            self.grounding = (grounding_from_parameter(
                p.instruction_grounding, self.policy.text_encoder.encode,
                p.grounding_min_similarity) if p.instruction_grounding else None)
        except (ActionSpaceError, ContractError, BackendError, OSError, ValueError) as exc:
            # The node stays alive and unconfigured; the reason is logged, on /diagnostics
            # (ERROR) at once, and lifecycle_manager reports it and may configure again.
            self.policy = None
            n = self.diag.count('configure_failed')
            self.diag.error = f'configure failed: {exc}'
            self.diag.reason = 'unconfigured: configure failed'
            self.get_logger().error(f'configure failed ({n} so far), staying unconfigured: '
                                    f'{exc}')
            self.diag.publish()
            return TransitionCallbackReturn.FAILURE
        self.diag.error = ''
        meta = self.policy.metadata
        chunks = (f', {self._chunk_publish} of {self.policy.chunk_steps} chunk steps per '
                  'prediction' if self._chunk_publish > 1 else '')
        self.get_logger().info(
            f'policy {p.model_file_path if p.backend != REMOTE_BACKEND else "(remote)"} '
            f'(config {meta.get("vla_ros.config")}, trained '
            f'{self.policy.trained}{chunks}) on {p.backend}: active providers '
            f'{self.policy.active_providers}')
        self.diag.set('chunk_steps_published', self._chunk_publish)
        if not self.policy.trained:
            self.get_logger().warn('the model metadata says its weights are untrained: '
                                   'actions are not meaningful')
        self.diag.set('active_providers', ','.join(self.policy.active_providers))
        self.diag.set('backend', p.backend)
        self.diag.set('model_config', meta.get('vla_ros.config', ''))
        unverified = unverified_files()
        self.diag.set('model_files_unverified', len(unverified))
        if unverified:
            self.get_logger().warn(f'model bytes NOT verified (no manifest.json beside them; '
                                   f'allowed by allow_unverified_model): {unverified}')
        self.composer = TargetComposer(space, ComposerConfig(p.target_timeout,
                                                             p.max_target_deviation))
        self._space_id = space.identity
        # Tokens go out only while active (a lifecycle publisher).
        self._pub = self.create_lifecycle_publisher(ActionTokens, 'vla/action_tokens',
                                                    COMMAND_QOS)
        sub, inputs = self.create_subscription, self._inputs
        self._endpoints = [
            sub(Image, 'vla/image', self._on_image, LATEST_IMAGE_QOS, callback_group=inputs),
            sub(String, 'vla/instruction', self._on_instruction, LATCHED_QOS,
                callback_group=inputs)]
        if self.policy.state_dim:
            self._endpoints += [
                sub(JointState, 'joint_states', self._on_joint_states, SENSOR_QOS,
                    callback_group=inputs),
                sub(ActionTarget, 'vla/target', self._on_target, COMMAND_QOS,
                    callback_group=inputs),
                sub(Bool, 'vla/motion_enabled', self._on_motion_enabled, LATCHED_QOS,
                    callback_group=inputs)]
        self._motion_enabled = None
        self.diag.reason = 'inactive: configured, waiting for activate'
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        """Start running the policy on the timer's ticks."""
        self._active = True
        self._chunk_wait = 0
        self.diag.reason = ''
        self.get_logger().info(f'active: policy at {self.params.inference_frequency:g} Hz')
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        """Stop running the policy (nothing is published while inactive)."""
        self._active = False
        self.diag.reason = 'inactive'
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        """Release the model and the endpoints (back to unconfigured)."""
        self._release()
        self.diag.reason = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        """Stop and release everything: a finalized node publishes nothing."""
        self._release()
        self.diag.reason = 'finalized'
        self.get_logger().info('finalized: policy released, publishing nothing')
        return TransitionCallbackReturn.SUCCESS

    def _release(self):
        self._active = False
        if isinstance(self.policy, RemotePolicy):
            self.policy.close()
        self.destroy_entities(self._endpoints)
        self._endpoints = []
        if self._pub is not None:
            self.destroy_lifecycle_publisher(self._pub)
            self._pub = None
        with self._lock:
            self.policy = None
            self.composer = None
            self._image = None
            self._instruction = self._said = None
            self.grounding = None

    def refused(self, text: str):
        """Log and count a refused lifecycle request (``ManagedNode``)."""
        self.diag.count('refused_transitions')
        self.get_logger().warn(text)

    # -- inputs ---------------------------------------------------------------------------
    def _on_image(self, msg: Image):
        with self._lock:
            self._image = msg

    def _on_joint_states(self, msg: JointState):
        try:
            q = joint_positions(msg, self.params.arm_joint_names)
        except ValueError as exc:
            n = self.diag.count('joint_states_rejected')
            self.get_logger().warn(f'rejecting joint_states ({n} so far): {exc}',
                                   throttle_duration_sec=5.0)
            return
        grip = self._gripper
        if self.params.gripper_joint_name in msg.name:
            value = float(msg.position[list(msg.name).index(self.params.gripper_joint_name)])
            grip = value if np.isfinite(value) else grip
        with self._lock:
            self._measured, self._gripper = q, grip
            self._measured_at = now_s(self)

    def _on_target(self, msg: ActionTarget):
        if self.composer is None:  # released (cleanup/shutdown)
            return
        try:
            target, _ = msg_to_target(msg, self.params.arm_joint_names, self._space_id)
            with self._lock:
                self.composer.observe(target, now_s(self))
        except ValueError as exc:
            n = self.diag.count('target_rejected')
            self.get_logger().warn(f'ignoring vla/target for the state input ({n} so far): '
                                   f'{exc}', throttle_duration_sec=5.0)

    def _on_motion_enabled(self, msg: Bool):
        # As detokenizer_node: targets composed while the arm is held were never executed.
        with self._lock:
            if self.composer is not None and bool(msg.data) != self._motion_enabled:
                self.composer.reset()
                # detokenizer_node drops the chunk steps left: predict at the next tick.
                self._chunk_wait = 0
            self._motion_enabled = bool(msg.data)

    def _state(self, now: float) -> np.ndarray:
        """Return the previous commanded target (state input); ValueError if no joints."""
        with self._lock:
            if self._measured is None or now - self._measured_at > self.params.state_timeout:
                raise ValueError('no recent joint_states for the state input (state_timeout '
                                 f'{self.params.state_timeout} s)')
            if self._motion_enabled is False:  # the arm is held: start from where it is
                self.composer.reset()
            return self.composer.previous(now, self._measured, self._gripper)

    def _on_instruction(self, msg: String):
        if self.policy is None:  # released (cleanup/shutdown)
            return
        text = msg.data.strip()
        if not text:
            self.diag.count('rejected_empty_instruction')
            self.get_logger().warn('ignoring empty instruction', throttle_duration_sec=2.0)
            return
        limit = self.params.instruction_log_chars
        quoted = text if len(text) <= limit else text[:limit] + f'… ({len(text)} chars)'
        said = text
        try:
            if self.grounding is not None:  # the trained phrasing it means, or refused
                grounded = self.grounding.ground(text)
                text = grounded.text
            self.policy.encode(text)  # once per new instruction, off the inference timer
        except GroundingError as exc:  # a new task the policy does not know: stop the old
            with self._lock:
                self._instruction = self._said = None
            self.diag.count('refused_instructions')
            self.diag.set('instruction', '')
            self.diag.set('grounded_instruction', '')
            self.get_logger().error(f'refusing instruction {quoted!r}: {exc}; nothing is '
                                    'published until an instruction is grounded',
                                    throttle_duration_sec=1.0)
            return
        except Exception as exc:  # tokenizer/ORT errors: keep the previous instruction
            self.diag.count('rejected_instruction')
            self.get_logger().error(f'cannot encode instruction {quoted!r}: {exc}',
                                    throttle_duration_sec=2.0)
            return
        with self._lock:
            changed = text != self._instruction or said != self._said
            self._instruction, self._said = text, said
        self.diag.count('instructions')
        if not changed:
            return
        self.diag.set('instruction', quoted)
        if self.grounding is not None:
            self.diag.set('grounded_instruction', text)
            self.diag.set('grounding_similarity', round(grounded.similarity, 3))
            self.get_logger().info(f'instruction {quoted!r} grounded as {text!r} '
                                   f'({grounded.task}, similarity {grounded.similarity:.2f})',
                                   throttle_duration_sec=1.0)
        self.diag.set('text_encode_ms', self.policy.last_encode_ms)
        # A new instruction is logged once, and at most once a second (a sender that
        # alternates instructions at 100 Hz cannot flood the log).
        self.get_logger().info(f'instruction: {quoted!r} (encoded in '
                               f'{self.policy.last_encode_ms:.1f} ms)',
                               throttle_duration_sec=1.0)

    def _skip(self, reason: str):
        self.diag.reason = reason
        self.diag.count('skipped')

    def _tick(self):
        if not self._active or self._pub is None or self.policy is None:
            return
        now = now_s(self)
        self._rate.tick(now)
        if self._chunk_wait > 0:  # the detokenizer is executing the last chunk's steps
            self._chunk_wait -= 1
            return
        with self._lock:
            msg, instruction = self._image, self._instruction
        if msg is None:
            return self._skip('no image received on vla/image')
        stamp_ns = time_to_ns(msg.header.stamp)
        self._image_age.update(stamp_ns * 1e-9)
        age = self._image_age.age(now)
        if not self._image_age.fresh(now):
            return self._skip(f'newest image is {age:.3f} s old (max_image_age '
                              f'{self.params.max_image_age} s)')
        if instruction is None:
            return self._skip('no instruction received on vla/instruction')
        try:
            rgb = image_to_rgb8(msg)
            if rgb.shape[:2] != IMAGE_SIZE:
                raise ImageError(f'expected {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]}, found '
                                 f'{rgb.shape[1]}x{rgb.shape[0]}')
            state = self._state(now) if self.policy.state_dim else None
            if isinstance(self.policy, RemotePolicy):  # the reply comes back on its own
                return self._submit_remote(rgb, instruction, state, stamp_ns,
                                           msg.header.frame_id)
            pred = self.policy.predict(rgb, instruction, state)
        except (ImageError, ValueError) as exc:
            self.diag.count('rejected_input')
            self.get_logger().warn(f'not publishing: {exc}', throttle_duration_sec=2.0)
            return self._skip(str(exc))
        except Exception as exc:  # runtime errors (ORT, CUDA, TensorRT) must not kill the node
            self.diag.count('inference_errors')
            self.get_logger().error(f'inference failed, not publishing: {exc!r}',
                                    throttle_duration_sec=2.0)
            return self._skip(f'inference failed: {exc}')
        tokens = pred.tokens[:self._chunk_publish * NUM_DIMENSIONS]
        self._pub.publish(tokens_to_msg(tokens, stamp_ns, self._space_id, msg.header.frame_id))
        self._chunk_wait = self._chunk_publish - 1
        self.diag.reason = ''
        self.diag.count('published')
        self._model_ms.add(pred.model_ms)
        self._age_ms.add(age * 1e3)

    # -- backend: remote (runtime/remote.py) ---------------------------------------------
    def _connect_remote(self, space: ActionSpace) -> RemotePolicy:
        """Connect to the policy server and check its model (configure); RemoteError."""
        try:
            self.remote_options.check()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.remote_options.insecure:
            self.get_logger().warn('remote_insecure: frames and tokens cross the network '
                                   'unencrypted')
        remote = RemotePolicy(self.remote_options, space.identity, self._on_remote_reply,
                              self.diag.count, self.diag.set, self._remote_log)
        try:
            info = remote.connect()
        except Exception:
            remote.close()
            raise
        self._remote_ms, self._last_remote_stamp = WindowStats(500), -1
        self._replies = []
        if getattr(self, '_reply_guard', None) is None:  # once; kept across configures
            self._reply_guard = self.create_guard_condition(self._publish_replies,
                                                            callback_group=self._inputs)
        self.get_logger().info(f'remote policy server {self.remote_options.endpoint}: model '
                               f'{info.model_id} (instance {info.server_instance})')
        return remote

    def _remote_log(self, level: str, text: str):
        if level == 'info':  # one call site per severity (rclpy loggers insist)
            self.get_logger().info(text)
        else:
            self.get_logger().warn(text)

    def _submit_remote(self, rgb, instruction, state, stamp_ns: int, frame_id: str):
        reason = self.policy.submit(rgb, instruction, state, stamp_ns, frame_id)
        if reason:
            return self._skip(reason)
        self.diag.reason = ''

    def _on_remote_reply(self, tokens, stamp_ns: int, frame_id: str, reply, round_trip_ms):
        """Hand a reply (on a gRPC thread) to the executor, which publishes it at once."""
        with self._lock:
            self._replies = (self._replies + [(stamp_ns, tokens, frame_id,
                                               reply.timing.model_ms, round_trip_ms)])[-8:]
        self._reply_guard.trigger()

    def _publish_replies(self):
        """Publish the replies' tokens stamped with their frames' source stamps."""
        with self._lock:
            replies, self._replies = sorted(self._replies, key=lambda r: r[0]), []
        pub = self._pub
        for stamp_ns, tokens, frame_id, model_ms, round_trip_ms in replies:
            if not self._active or pub is None:
                return
            if stamp_ns <= self._last_remote_stamp:  # replies in flight may cross
                self.diag.count('remote_out_of_order')
                continue
            self._last_remote_stamp = stamp_ns
            # A served chunk goes out like a local one: its first chunk_execute steps, then
            # the ticks they take pass before the next frame is sent.
            tokens = tokens[:self._chunk_publish * NUM_DIMENSIONS]
            pub.publish(tokens_to_msg(tokens, stamp_ns, self._space_id, frame_id))
            self._chunk_wait = self._chunk_publish if self._chunk_publish > 1 else 0
            self.diag.count('published')
            self._model_ms.add(model_ms)
            self._remote_ms.add(round_trip_ms)
            self._age_ms.add((now_s(self) - stamp_ns * 1e-9) * 1e3)

    def _report(self):
        r = self._rate.summary()
        m = self._model_ms.summary()
        self.diag.set('rate_hz', r['rate_hz'])
        self.diag.set('jitter_ms_p99', r['jitter_p99'] * 1e3)
        self.diag.set('model_ms_p50', m['p50'])
        self.diag.set('model_ms_p99', m['p99'])
        self.diag.set('image_age_ms_p50', self._age_ms.summary()['p50'])
        if isinstance(self.policy, RemotePolicy):
            rt = self._remote_ms.summary()
            self.diag.set('remote_round_trip_ms_p50', rt['p50'])
            self.diag.set('remote_round_trip_ms_p99', rt['p99'])


def main(args=None):
    """Run inference_node."""
    exit_with(run(InferenceNode, args))


if __name__ == '__main__':
    main()
