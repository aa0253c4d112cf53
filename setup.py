"""ament_python package definition for vla_ros."""

from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'vla_ros'
NODES = ('camera_node', 'inference_node', 'detokenizer_node', 'interpolation_node',
         'sim_node', 'expert_node', 'lifecycle_manager')
# Model artifacts up to this size are installed into share/ (larger ones stay where
# `vla-ros export` wrote them and are found through the model_file_path parameter).
MAX_DATA_FILE = 512 * 1024 * 1024


def _tree(folder):
    """Map every small file under ``folder`` to share/vla_ros/<its dir>."""
    out = {}
    for path in glob(os.path.join(folder, '**', '*'), recursive=True):
        if os.path.isfile(path) and os.path.getsize(path) <= MAX_DATA_FILE:
            out.setdefault(os.path.join('share', PACKAGE, os.path.dirname(path)), []).append(path)
    return sorted(out.items())


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    package_data={PACKAGE: ['sim/assets/*', 'wire/_proto/*.proto']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
    ] + _tree('launch') + _tree('config') + _tree('models') + _tree('description'),
    install_requires=['setuptools', 'numpy', 'pyyaml', 'onnxruntime', 'tokenizers'],
    extras_require={'train': ['torch', 'safetensors', 'pyarrow', 'av'], 'sim': ['mujoco'],
                    'bags': ['rosbags'],
                    # backend: remote and vla-ros serve (package.xml says why not rosdep)
                    'remote': ['grpcio', 'protobuf>=7.35.1', 'pillow']},
    zip_safe=True,
    maintainer='vla_ros maintainers',
    maintainer_email='maintainers@vla-ros.invalid',
    description='RT-1 vision-language-action control stack for ROS 2',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [f'{n} = {PACKAGE}.nodes.{n}:main' for n in NODES]
        + ['vla-ros = vla_ros.cli:main'],
    },
)
