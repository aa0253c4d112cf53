"""What decides a training run's weights: ``TrainConfig`` (saved with every checkpoint)."""

import dataclasses
import hashlib
import json


DIM_NAMES = [f'j{i}' for i in range(1, 8)] + ['vx', 'vy', 'wz', 'grip']


@dataclasses.dataclass
class TrainConfig:
    """Everything that decides the weights (saved with every checkpoint)."""

    model: str = 'nano'
    # Action space to train in ('' = the one the data was recorded in). Datasets store
    # the previous commanded target, so deltas convert exactly to absolute targets.
    action_space: str = ''
    # Start from these weights (.safetensors), e.g. to continue on DAgger data.
    init: str = ''
    steps: int = 30000
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 2e-5
    warmup: int = 500
    weight_decay: float = 0.05
    shift: int = 4
    label_smoothing_bins: float = 0.0
    val_fraction: float = 0.04
    seed: int = 0
    bf16: str = 'auto'
    threads: int = 0
    snapshot_every: int = 2500
    val_every: int = 500
    aux_target_weight: float = 0.0
    # The auxiliary head also regresses the goal of place episodes (the bowl) from the same
    # visual tokens, at the same weight: a policy that carries the block must see where to.
    aux_goal: bool = False
    # Leave idle frames (no arm, base or gripper change: train_data.idle_frames) out of
    # the training batches; validation keeps every frame.
    drop_idle: bool = False
    # Action chunks: predict the next CHUNK steps per frame (learning/chunks.py); 1 is the
    # single-step contract the nodes run. ``init`` from a single-step checkpoint copies its
    # action queries to every step.
    chunk: int = 1
    # Chunk steps of learner-driven (DAgger) frames that enter the loss; 0: all. A chunk
    # label is the next k recorded labels, and in a DAgger episode those frames are where
    # the learner went, not the expert's plan from this state: only the first step is an
    # expert label for the state it belongs to (1).
    learner_chunk_steps: int = 0


# The auxiliary target is regressed in units of 10 cm (a unit-scale output).
TARGET_SCALE = 0.1


def config_hash(cfg: TrainConfig) -> str:
    """Short identity of a training configuration."""
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
