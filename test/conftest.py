"""Shared test set-up: private DDS domain on loopback, paths, the known test model."""

import os
import random

import pytest

# Before any rclpy import: discovery stays on this host and this run gets its own domain
# so parallel runs (or a developer's graph) never cross-talk.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
# 1..101 keeps DDS ports below Linux's ephemeral range (domain IDs above 101 can collide).
os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random(os.getpid()).randint(20, 101)))
os.environ.setdefault('MUJOCO_GL', 'egl')

from vla_ros.core.action_space import ActionSpace  # noqa: E402
from vla_ros.paths import default_action_space_file, default_params_file  # noqa: E402


@pytest.fixture(scope='session')
def action_space() -> ActionSpace:
    """Load the shipped action space (config/action_space.yaml)."""
    return ActionSpace.from_yaml(default_action_space_file())


@pytest.fixture(scope='session')
def params_file() -> str:
    """Return the shipped parameters file."""
    return default_params_file()


@pytest.fixture(scope='session')
def test_model_dir(tmp_path_factory, action_space) -> str:
    """A freshly written known-function test model directory."""
    from vla_ros.tools import test_model
    return test_model.write(str(tmp_path_factory.mktemp('test_model')), action_space)
