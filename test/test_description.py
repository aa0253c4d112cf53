"""
Robot and world descriptions: Gazebo's parser accepts them; MuJoCo, URDF and SDF agree.

The sdformat checks need ``ign sdf`` (Debian: ignition-tools, libsdformat-dev; the Makefile
installs them where apt-get can); they are skipped with that reason elsewhere.
"""

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
URDF = os.path.join(ROOT, 'description', 'urdf', 'vla_robot.urdf')
WORLD = os.path.join(ROOT, 'description', 'gazebo', 'vla_world.sdf')
MJCF = os.path.join(ROOT, 'vla_ros', 'sim', 'assets', 'robot.xml')


def _ign_sdf():
    """Return the ``ign`` executable when its sdf verb works, else skip with the reason."""
    ign = shutil.which('ign')
    if ign is None:
        pytest.skip('ign (Debian ignition-tools + libsdformat-dev) is not installed')
    probe = subprocess.run([ign, 'sdf', '--help'], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f'ign has no working sdf verb: {probe.stderr.strip()[:200]}')
    return ign


def _errors(text):
    return [line for line in text.splitlines() if 'Error' in line and 'backward' not in line]


def test_world_passes_sdformat_check():
    ign = _ign_sdf()
    result = subprocess.run([ign, 'sdf', '-k', WORLD], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and 'Valid' in result.stdout, result.stdout + result.stderr


def test_urdf_converts_to_sdf_without_errors(tmp_path):
    ign = _ign_sdf()
    converted = subprocess.run([ign, 'sdf', '-p', URDF], capture_output=True, text=True,
                               timeout=120)
    assert converted.returncode == 0 and not _errors(converted.stderr), converted.stderr
    out = tmp_path / 'vla_robot.sdf'
    out.write_text(converted.stdout)
    checked = subprocess.run([ign, 'sdf', '-k', str(out)], capture_output=True, text=True,
                             timeout=120)
    assert checked.returncode == 0 and 'Valid' in checked.stdout, checked.stdout + checked.stderr
    # Every movable URDF joint survives the conversion under its own name (fixed joints are
    # merged into their parent link by the conversion).
    sdf_joints = {j.get('name') for j in ET.parse(out).getroot().iter('joint')}
    urdf_joints = {j.get('name') for j in ET.parse(URDF).getroot().iter('joint')
                   if j.get('type') != 'fixed'}
    assert urdf_joints <= sdf_joints, urdf_joints - sdf_joints


def test_names_are_unique_and_shared_by_mujoco_and_urdf():
    urdf = ET.parse(URDF).getroot()
    links = [e.get('name') for e in urdf.iter('link')]
    joints = [e.get('name') for e in urdf.iter('joint')]
    assert len(set(links)) == len(links) and len(set(joints)) == len(joints)
    # Gazebo keeps links and joints in one namespace per model.
    assert not set(links) & set(joints), set(links) & set(joints)
    mjcf = ET.parse(MJCF).getroot()
    mj_joints = {e.get('name') for e in mjcf.iter('joint') if e.get('name')}
    movable = {e.get('name') for e in urdf.iter('joint') if e.get('type') != 'fixed'}
    arm_and_fingers = {n for n in movable if n.startswith(('arm_joint_', 'finger_'))}
    assert len(arm_and_fingers) == 9 and arm_and_fingers <= mj_joints, \
        arm_and_fingers - mj_joints
    from vla_ros.sim.robot import FINGER_JOINTS
    assert set(FINGER_JOINTS) <= arm_and_fingers
    # Within each SDF link, collisions and visuals have distinct names.
    world = ET.parse(WORLD).getroot()
    for link in world.iter('link'):
        names = [e.get('name') for e in link if e.tag in ('collision', 'visual', 'sensor')]
        assert len(names) == len(set(names)), (link.get('name'), names)
