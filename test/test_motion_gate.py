"""
Relative actions while motion is off: they start from the measured arm, never chain.

While interpolation_node holds the arm (``vla/enable`` false, e-stop, inactive), the targets
detokenizer_node composes are not executed. Chaining relative actions on them would walk the
commanded target away from the arm (up to ``max_target_deviation``), and the first target
after the gate opens would jump there. interpolation_node says whether motion is on
(``vla/motion_enabled``, latched); detokenizer_node composes every action on the measured arm
while it is off, and the first one after it opens too. Real node processes in lock step.
"""

from graph_harness import LockstepRig
import numpy as np
from vla_ros.conversions import tokens_to_msg
from vla_ros.core.action_space import ActionTokenizer
from vla_ros.nodes.common import COMMAND_QOS
from vla_ros.testing.lockstep import NS
from vla_ros_interfaces.msg import ActionTokens

POLICY_TICKS = 4            # 20 Hz control ticks per 5 Hz policy period
START_NS = 100 * NS
HELD = [0.1, -0.2, 0.05, 0.3, 0.0, -0.1, 0.2]   # where the robot's arm stands


def test_relative_actions_start_from_the_measured_arm_while_motion_is_off(
        ros, joint_params_file, joint_action_space):
    space = joint_action_space
    tok = ActionTokenizer(space)
    tokens = np.full(11, 140, np.uint8)   # every arm joint +0.035 rad per step
    tokens[7:10] = 128                    # base still
    tokens[10] = 0                        # gripper open
    delta = tok.detokenize(tokens)[:7]
    assert np.all(delta > 0.01)
    overrides = {'interpolation_node': {'start_enabled': False, 'clock_timeout': 10.0,
                                        'command_timeout': 0.5}}
    rig = LockstepRig(joint_params_file, overrides,
                      nodes=('detokenizer_node', 'interpolation_node'))
    rig.joint_positions = HELD + [0.0]    # the arm stays where it is (held)
    try:
        rig.start(START_NS, inputs=[('vla/action_tokens', ActionTokens, COMMAND_QOS)])
        targets = rig.records.targets

        def policy_step():
            for _ in range(POLICY_TICKS):
                rig.tick()
            rig.step.settle(2)
            n = len(targets)
            rig.step.publish('vla/action_tokens', tokens_to_msg(
                tokens, rig.step.now_ns, space.identity, 'camera'))
            rig.step.settle(2)
            assert len(targets) == n + 1, 'one target per tokens message'
            return np.array(targets[-1]['arm'])

        # Motion off: five policy steps, each target is the measured arm plus one step.
        for _ in range(5):
            np.testing.assert_allclose(policy_step(), np.add(HELD, delta), atol=1e-9)
        # Motion on: the first target starts from the measured arm, then they chain.
        assert rig.enable(True).success is True
        np.testing.assert_allclose(policy_step(), np.add(HELD, delta), atol=1e-9)
        np.testing.assert_allclose(policy_step(), np.add(HELD, 2 * delta), atol=1e-9)
        _, diag = rig.report('detokenizer_node')
        assert diag.get('motion_enabled') == 'True', diag
        assert diag.get('resynced_to_measured', '0') == '0', diag
        # Off again: back to the measured arm.
        assert rig.enable(False).success is True
        np.testing.assert_allclose(policy_step(), np.add(HELD, delta), atol=1e-9)
    finally:
        codes = rig.close()
    assert all(c == 0 for c in codes.values()), codes
