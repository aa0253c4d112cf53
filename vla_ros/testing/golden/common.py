"""Constants every part of the golden replay shares."""

import os

from ...core.action_space import DEFAULT_ARM_JOINTS
from ...paths import default_model_dir

NS = 1_000_000_000
FORMAT = 1
TOLERANCE = 1e-6
GENERATED_BAG_VERSION = 1
INPUT_TOPICS = ('camera/image_raw', 'joint_states', 'vla/instruction', 'vla/estop')
ARM_JOINTS = list(DEFAULT_ARM_JOINTS)
DIMENSION_NAMES = ARM_JOINTS + ['base_vx', 'base_vy', 'base_wz', 'gripper']
# Run so that a bag replays exactly (see the module docstring).
REPLAY_PARAMETERS = {'interpolation_node': {'start_enabled': True, 'clock_timeout': 10.0}}


class GoldenError(ValueError):
    """A case that cannot be run (missing model or bag, bad case file)."""


def shipped_model_dir() -> str:
    """
    Return the shipped model folder: the installed share/vla_ros/models/rt1_nano.

    When the installed copy has no policy yet but the source checkout this module runs from
    has one (``make models`` exported it, ``make install`` has not copied it yet), that one.
    """
    installed = default_model_dir()
    if os.path.isfile(os.path.join(installed, 'policy.onnx')):
        return installed
    checkout = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..'))
    source = os.path.join(checkout, 'models', os.path.basename(installed))
    return source if os.path.isfile(os.path.join(source, 'policy.onnx')) else installed
