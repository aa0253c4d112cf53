"""
Demonstration datasets on disk in the LeRobotDataset v3 layout (docs/dataset.md).

::

    DATASET/
      meta/info.json                               fps, features, counts, file layout
      meta/tasks.parquet                           instruction text (index) -> task_index
      meta/episodes/chunk-000/file-000.parquet     one row per episode (+ vla_ros fields)
      data/chunk-CCC/file-FFF.parquet              one row per frame
      videos/observation.images.head_camera/chunk-CCC/file-FFF.mp4

One data file and one video file per writer session (``DatasetWriter``), so a collection can
be resumed by opening the dataset again and appending a new session. Files are numbered as
``info.json`` declares: ``chunks_size`` files per chunk folder, then the next chunk.
``meta/tasks.parquet`` is laid out as LeRobot reads it: the instruction text is the table's
(pandas) index and ``task_index`` its one column, so ``pandas.read_parquet(...).iloc[i].name``
is the text of task ``i``. Frames are the 300x300
rgb8 images exactly as inference_node receives them, encoded as H.264 (``libx264rgb``,
lossless RGB by default: crf 0) through PyAV. Needs the training extra (pyarrow, av).

Length (over 300 lines): the LeRobotDataset v3 layout written and read in one place, so
reader and writer cannot drift.
"""

from dataclasses import dataclass
import glob
import hashlib
import json
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..core.action_space import DEFAULT_ARM_JOINTS

CODEBASE_VERSION = 'v3.0'
IMAGE_KEY = 'observation.images.head_camera'
STATE_KEY = 'observation.state'
JOINT_KEY = 'observation.joint_state'
ACTION_KEY = 'action'
TOKENS_KEY = 'action.tokens'
# The named object's position in the base frame + a valid flag (training target only).
TARGET_KEY = 'observation.environment_state'
TARGET_NAMES = ['target_x', 'target_y', 'target_z', 'target_valid']
CHUNKS_SIZE = 1000
# The layout info.json declares (LeRobot's placeholders).
DATA_PATH = 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'
VIDEO_PATH = 'videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4'
EPISODES_PATH = 'meta/episodes/chunk-000/file-000.parquet'


def chunk_of(file_number: int, chunks_size: int = CHUNKS_SIZE) -> Tuple[int, int]:
    """Return (chunk_index, file_index) of the ``file_number``-th data/video file."""
    return file_number // chunks_size, file_number % chunks_size


def _data_files(root: str) -> List[str]:
    return sorted(glob.glob(os.path.join(root, 'data', 'chunk-*', 'file-*.parquet')))


def _tasks_table(tasks: Sequence[str]):
    """meta/tasks.parquet as pandas writes a frame indexed by the text (no pandas needed)."""
    _, pa = _require()
    table = pa.table({'task_index': pa.array(range(len(tasks)), pa.int64()),
                      'task': pa.array(list(tasks), pa.string())})
    pandas_meta = {
        'index_columns': ['task'],
        'column_indexes': [{'name': None, 'field_name': None, 'pandas_type': 'unicode',
                            'numpy_type': 'object', 'metadata': {'encoding': 'UTF-8'}}],
        'columns': [{'name': 'task_index', 'field_name': 'task_index', 'pandas_type': 'int64',
                     'numpy_type': 'int64', 'metadata': None},
                    {'name': 'task', 'field_name': 'task', 'pandas_type': 'unicode',
                     'numpy_type': 'object', 'metadata': None}],
        'creator': {'library': 'pyarrow', 'version': pa.__version__},
        'pandas_version': '2.2.0'}
    return table.replace_schema_metadata({b'pandas': json.dumps(pandas_meta).encode()})


def _require():
    try:
        import av
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError('datasets need the training extra: pip install pyarrow av') from exc
    return av, pyarrow


def features(image_size: int = 300) -> Dict:
    """Feature table of meta/info.json (LeRobot's dtype/shape/names convention)."""
    state_names = list(DEFAULT_ARM_JOINTS) + ['base_vx', 'base_vy', 'base_wz', 'gripper']
    return {
        IMAGE_KEY: {'dtype': 'video', 'shape': [image_size, image_size, 3],
                    'names': ['height', 'width', 'channels'],
                    'info': {'video.codec': 'libx264rgb', 'video.pix_fmt': 'rgb24',
                             'video.crf': 0, 'video.is_depth_map': False}},
        STATE_KEY: {'dtype': 'float32', 'shape': [11], 'names': state_names,
                    'description': 'previous commanded 11-D target (the policy state input)'},
        JOINT_KEY: {'dtype': 'float32', 'shape': [8],
                    'names': state_names[:7] + ['gripper_closure'],
                    'description': 'measured arm joints and gripper closure'},
        ACTION_KEY: {'dtype': 'float32', 'shape': [11], 'names': state_names,
                     'description': 'action values in the dataset action space'},
        TOKENS_KEY: {'dtype': 'uint8', 'shape': [11], 'names': state_names},
        TARGET_KEY: {'dtype': 'float32', 'shape': [4], 'names': TARGET_NAMES,
                     'description': 'named object in the base frame (m), valid flag; zeros '
                     'where unknown (no named object, or recorded on a robot)'},
        'timestamp': {'dtype': 'float32', 'shape': [1]},
        'frame_index': {'dtype': 'int64', 'shape': [1]},
        'episode_index': {'dtype': 'int64', 'shape': [1]},
        'index': {'dtype': 'int64', 'shape': [1]},
        'task_index': {'dtype': 'int64', 'shape': [1]},
        'next.success': {'dtype': 'bool', 'shape': [1]},
    }


@dataclass
class Frame:
    """One policy tick of an episode."""

    image: np.ndarray           # uint8 [300, 300, 3]
    state: np.ndarray           # float [11]
    joint_state: np.ndarray     # float [8]
    action: np.ndarray          # float [11]
    tokens: np.ndarray          # uint8 [11]
    success: bool = False
    target: Optional[np.ndarray] = None  # [x, y, z, valid] (TARGET_KEY), None: unknown


class VideoWriter:
    """Append rgb24 frames to one MP4 (H.264 RGB, lossless at crf 0)."""

    def __init__(self, path: str, fps: int, size: int, crf: int = 0):
        av, _ = _require()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.container = av.open(path, 'w')
        self.stream = self.container.add_stream('libx264rgb', rate=int(fps))
        self.stream.width = self.stream.height = int(size)
        self.stream.pix_fmt = 'rgb24'
        self.stream.options = {'crf': str(int(crf)), 'preset': 'veryfast'}
        self._av = av
        self.frames = 0

    def add(self, image: np.ndarray):
        """Encode one uint8 [H, W, 3] frame."""
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format='rgb24')
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self):
        """Flush the encoder and close the file."""
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def read_video(path: str) -> Iterator[np.ndarray]:
    """Yield the uint8 [H, W, 3] frames of an MP4 in order."""
    av, _ = _require()
    with av.open(path) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format='rgb24')


class DatasetWriter:
    """
    Writes episodes into a new or existing dataset (one new data + video file per session).

    ``meta`` (fps, action space, ...) must match an existing dataset's; episodes of an
    interrupted session are lost, earlier sessions stay (resume = open again and append).
    """

    def __init__(self, root: str, fps: int, info_extra: Optional[Dict] = None,
                 image_size: int = 300, crf: int = 0, chunks_size: int = CHUNKS_SIZE):
        _require()
        self.root = root
        self.fps = int(fps)
        self.image_size = int(image_size)
        self.crf = int(crf)
        self.info = read_info(root) if os.path.exists(info_path(root)) else None
        extra = dict(info_extra or {})
        if self.info is not None:
            for key, value in extra.items():
                if key in self.info and self.info[key] != value:
                    raise ValueError(f'dataset {root}: {key} is {self.info[key]!r}, this '
                                     f'session has {value!r}; use another folder')
            if self.info['fps'] != self.fps:
                raise ValueError(f'dataset {root} has fps {self.info["fps"]}, not {self.fps}')
        self.extra = extra
        self.chunks_size = int(self.info.get('chunks_size', chunks_size)
                               if self.info is not None else chunks_size)
        self.episodes = read_episodes(root) if self.info is not None else []
        self.tasks = read_tasks(root) if self.info is not None else []
        self.file_number = len(_data_files(root))
        self.chunk_index, self.file_index = chunk_of(self.file_number, self.chunks_size)
        self.video: Optional[VideoWriter] = None
        self.rows: List[Dict] = []
        self.total_frames = sum(e['length'] for e in self.episodes)
        self.session_frames = 0

    def _video(self) -> VideoWriter:
        if self.video is None:
            path = os.path.join(self.root, VIDEO_PATH.format(
                video_key=IMAGE_KEY, chunk_index=self.chunk_index, file_index=self.file_index))
            self.video = VideoWriter(path, self.fps, self.image_size, self.crf)
        return self.video

    def add_episode(self, frames: Sequence[Frame], instruction: str, extra: Dict) -> int:
        """Append one episode; return its episode_index."""
        if not frames:
            raise ValueError('an episode needs at least one frame')
        if instruction not in self.tasks:
            self.tasks.append(instruction)
        task_index = self.tasks.index(instruction)
        episode = len(self.episodes)
        video = self._video()
        start = video.frames
        for i, f in enumerate(frames):
            if f.image.shape != (self.image_size, self.image_size, 3) or \
                    f.image.dtype != np.uint8:
                raise ValueError(f'frame {i}: expected uint8 [{self.image_size}, '
                                 f'{self.image_size}, 3], found {f.image.dtype} '
                                 f'{list(f.image.shape)}')
            video.add(f.image)
            self.rows.append({
                'index': self.total_frames + i, 'episode_index': episode, 'frame_index': i,
                'timestamp': np.float32(i / self.fps), 'task_index': task_index,
                STATE_KEY: np.asarray(f.state, np.float32).tolist(),
                JOINT_KEY: np.asarray(f.joint_state, np.float32).tolist(),
                ACTION_KEY: np.asarray(f.action, np.float32).tolist(),
                TOKENS_KEY: np.asarray(f.tokens, np.uint8).tolist(),
                TARGET_KEY: (np.zeros(4, np.float32) if f.target is None
                             else np.asarray(f.target, np.float32)).tolist(),
                'next.success': bool(f.success)})
        row = {'episode_index': episode, 'length': len(frames), 'tasks': [instruction],
               'data/chunk_index': self.chunk_index, 'data/file_index': self.file_index,
               'dataset_from_index': self.total_frames,
               'dataset_to_index': self.total_frames + len(frames),
               f'videos/{IMAGE_KEY}/chunk_index': self.chunk_index,
               f'videos/{IMAGE_KEY}/file_index': self.file_index,
               f'videos/{IMAGE_KEY}/from_timestamp': start / self.fps,
               f'videos/{IMAGE_KEY}/to_timestamp': (start + len(frames)) / self.fps,
               'video_from_frame': start}
        row.update(extra)
        self.episodes.append(row)
        self.total_frames += len(frames)
        self.session_frames += len(frames)
        return episode

    def close(self):
        """Write this session's data file and update the metadata."""
        _, pa = _require()
        import pyarrow.parquet as pq
        if self.video is not None:
            self.video.close()
        if self.rows:
            path = os.path.join(self.root, DATA_PATH.format(chunk_index=self.chunk_index,
                                                            file_index=self.file_index))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(pa.Table.from_pylist(self.rows), path)
        os.makedirs(os.path.dirname(os.path.join(self.root, EPISODES_PATH)), exist_ok=True)
        if self.episodes:
            pq.write_table(pa.Table.from_pylist(self.episodes),
                           os.path.join(self.root, EPISODES_PATH))
        pq.write_table(_tasks_table(self.tasks), os.path.join(self.root, 'meta', 'tasks.parquet'))
        info = {
            'codebase_version': CODEBASE_VERSION, 'robot_type': 'vla_ros_sim_mobile_manipulator',
            'fps': self.fps, 'total_episodes': len(self.episodes),
            'total_frames': self.total_frames, 'total_tasks': len(self.tasks),
            'chunks_size': self.chunks_size, 'data_files_size_in_mb': 100,
            'video_files_size_in_mb': 500, 'data_path': DATA_PATH, 'video_path': VIDEO_PATH,
            'features': features(self.image_size),
        }
        info.update(self.extra)
        with open(info_path(self.root), 'w', encoding='utf-8') as stream:
            json.dump(info, stream, indent=2, sort_keys=True)
            stream.write('\n')
        self.rows = []
        self.video = None


def info_path(root: str) -> str:
    """Path of meta/info.json."""
    return os.path.join(root, 'meta', 'info.json')


def read_info(root: str) -> Dict:
    """Load meta/info.json (ValueError when the folder is not a dataset)."""
    path = info_path(root)
    if not os.path.isfile(path):
        raise ValueError(f'{root} is not a dataset: no meta/info.json')
    with open(path, encoding='utf-8') as stream:
        return json.load(stream)


def read_episodes(root: str) -> List[Dict]:
    """One dict per episode (meta/episodes), in episode order."""
    import pyarrow.parquet as pq
    path = os.path.join(root, EPISODES_PATH)
    return pq.read_table(path).to_pylist() if os.path.exists(path) else []


def read_tasks(root: str) -> List[str]:
    """Instruction texts by task_index."""
    import pyarrow.parquet as pq
    path = os.path.join(root, 'meta', 'tasks.parquet')
    return pq.read_table(path).column('task').to_pylist() if os.path.exists(path) else []


@dataclass
class LoadedDataset:
    """Every frame's table columns as numpy arrays (images loaded separately)."""

    info: Dict
    episodes: List[Dict]
    tasks: List[str]
    columns: Dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns['index'])


def load(root: str) -> LoadedDataset:
    """Read the frame tables of every session, ordered by global index."""
    _, pa = _require()
    import pyarrow.parquet as pq
    info = read_info(root)
    files = _data_files(root)
    table = pa.concat_tables([pq.read_table(f) for f in files]) if files else None
    cols: Dict[str, np.ndarray] = {}
    if table is not None:
        for name in table.column_names:
            values = table.column(name).to_pylist()
            cols[name] = np.asarray(values)
        order = np.argsort(cols['index'])
        cols = {k: v[order] for k, v in cols.items()}
    episodes = read_episodes(root)
    episodes = [e for e in episodes if e['dataset_to_index'] <= len(cols.get('index', []))]
    return LoadedDataset(info, episodes, read_tasks(root), cols)


def iter_episode_images(root: str, episodes: Sequence[Dict]
                        ) -> Iterator[Tuple[Dict, int, np.ndarray]]:
    """Yield (episode row, frame index, image) for ``episodes``, file by file."""
    by_file: Dict[Tuple[int, int], List[Dict]] = {}
    for e in episodes:
        key = (int(e[f'videos/{IMAGE_KEY}/chunk_index']), int(e[f'videos/{IMAGE_KEY}/file_index']))
        by_file.setdefault(key, []).append(e)
    for chunk_index, file_index in sorted(by_file):
        path = os.path.join(root, VIDEO_PATH.format(video_key=IMAGE_KEY, chunk_index=chunk_index,
                                                    file_index=file_index))
        wanted = sorted(by_file[(chunk_index, file_index)], key=lambda e: e['video_from_frame'])
        frames = read_video(path)
        position = 0
        for e in wanted:
            while position < e['video_from_frame']:
                next(frames)
                position += 1
            for i in range(e['length']):
                yield e, i, next(frames)
                position += 1


def dataset_id(root: str) -> str:
    """Content identity: sha256 over the data parquet files and meta (first 16 hex)."""
    digest = hashlib.sha256()
    paths = _data_files(root)
    paths.append(os.path.join(root, EPISODES_PATH))
    for path in paths:
        with open(path, 'rb') as stream:
            digest.update(stream.read())
    return digest.hexdigest()[:16]
