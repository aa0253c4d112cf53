"""Where the installed package keeps its share/ files (config, launch, models)."""

import os
import sys

PACKAGE = 'vla_ros'


def share_dir() -> str:
    """Return share/vla_ros: from the ament index, else the install prefix, else the source."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return get_package_share_directory(PACKAGE)
    except Exception:  # not indexed (AMENT_PREFIX_PATH unset) or ament_index missing
        pass
    candidate = os.path.join(sys.prefix, 'share', PACKAGE)
    if os.path.isdir(candidate):
        return candidate
    # Running from a source checkout.
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def share_file(*parts: str) -> str:
    """Path of a file under share/vla_ros."""
    return os.path.join(share_dir(), *parts)


def default_params_file() -> str:
    """config/vla_ros.yaml."""
    return share_file('config', 'vla_ros.yaml')


def default_action_space_file() -> str:
    """config/action_space.yaml."""
    return share_file('config', 'action_space.yaml')


def default_dds_profile(network: bool = False) -> str:
    """Return config/fastdds_large_shm.xml (UDP on loopback) or its _network variant."""
    return share_file('config', 'fastdds_large_shm_network.xml' if network
                      else 'fastdds_large_shm.xml')


def default_model_dir() -> str:
    """models/rt1_nano: the shipped trained policy (exported by `make models`)."""
    return share_file('models', 'rt1_nano')
