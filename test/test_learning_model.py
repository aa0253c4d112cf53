"""Training lowers the loss; the shipped policy: torch/ONNX agreement, closed-loop success."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('pyarrow')

from vla_ros.learning import collect, dataset as ds, train  # noqa: E402
from vla_ros.paths import default_model_dir  # noqa: E402

SHIPPED = default_model_dir()


@pytest.fixture(scope='module')
def small_dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data') / 'expert')
    collect.collect(root, {'pick_block': 2, 'drive_to_marker': 2, 'gripper': 2},
                    seed_start=7, quiet=True)
    return root


def test_a_few_training_steps_lower_the_loss(small_dataset, tmp_path):
    cfg = train.TrainConfig(steps=20, batch_size=8, lr=2e-3, warmup=3, val_fraction=0.0,
                            snapshot_every=20, val_every=10, threads=2)
    data, phrasings, _ = train.load_data([small_dataset], 3, quiet=True)
    text = train.TextTable(phrasings)
    idx = np.arange(len(data.tokens))
    from vla_ros.model.config import get_config
    from vla_ros.model.rt1 import build_policy
    device = torch.device('cpu')
    before = train.evaluate_offline(build_policy(get_config('nano')), data, idx, text, device,
                                    False)['val_loss']
    summary = train.train([small_dataset], str(tmp_path / 'run'), cfg, quiet=True)
    assert summary['step'] == 20
    from safetensors.torch import load_file
    model = build_policy(get_config('nano'),
                         state_dict=load_file(str(tmp_path / 'run' /
                                                  'weights_step000020.safetensors')))
    after = train.evaluate_offline(model, data, idx, text, device, False)['val_loss']
    assert after < 0.7 * before, (before, after)
    assert os.path.exists(tmp_path / 'run' / 'curves.png')
    rows = open(tmp_path / 'run' / 'metrics.csv').read().splitlines()
    assert len(rows) == 3  # header + two validation points
    # Same seed, same data, same settings: the same weights (resume starts from last.pt,
    # so a second folder is needed).
    train.train([small_dataset], str(tmp_path / 'run2'), cfg, quiet=True)
    a = load_file(str(tmp_path / 'run' / 'weights_step000020.safetensors'))
    b = load_file(str(tmp_path / 'run2' / 'weights_step000020.safetensors'))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def shipped():
    path = os.path.join(SHIPPED, 'policy.onnx')
    if not os.path.isfile(path):
        pytest.fail(f'no shipped model at {path}: run `make models`')
    with open(os.path.join(SHIPPED, 'manifest.json')) as stream:
        manifest = json.load(stream)
    return manifest


def test_shipped_model_is_trained_and_describes_its_training(shipped):
    meta = shipped['policy_metadata']
    assert meta['vla_ros.trained'] == 'true' and meta['vla_ros.state_dim'] == '11'
    assert json.loads(meta['vla_ros.datasets'])
    assert json.loads(meta['vla_ros.training'])['train_config']['model'] == 'nano'
    assert 'mean_success_rate' in json.loads(meta['vla_ros.evaluation'])


def test_torch_and_onnx_agree_on_dataset_frames(shipped, small_dataset):
    """>= 99.5 % identical tokens between the training framework and the exported graph."""
    from safetensors.torch import load_file
    from vla_ros.core.action_space import ActionSpace
    from vla_ros.model.config import get_config
    from vla_ros.model.rt1 import build_policy
    from vla_ros.paths import default_action_space_file
    from vla_ros.runtime.policy import Policy, PolicyFiles
    policy = Policy(PolicyFiles.from_paths(os.path.join(SHIPPED, 'policy.onnx')),
                    ActionSpace.from_yaml(default_action_space_file()))
    model = build_policy(get_config('nano'),
                         state_dict=load_file(os.path.join(SHIPPED, 'policy.safetensors')))
    loaded = ds.load(small_dataset)
    cols = loaded.columns
    same = total = 0
    with torch.no_grad():
        for e, i, image in ds.iter_episode_images(small_dataset, loaded.episodes):
            k = e['dataset_from_index'] + i
            state = cols[ds.STATE_KEY][k].astype(np.float32)
            text = e['tasks'][0]
            onnx_tokens = policy.predict(image, text, state).tokens
            emb, mask = policy.encode(text)
            logits = model(torch.from_numpy(image[None]), torch.from_numpy(emb),
                           torch.from_numpy(mask), torch.from_numpy(state[None]))
            torch_tokens = logits[0].argmax(-1).numpy()
            same += int(np.sum(torch_tokens == onnx_tokens))
            total += 11
    assert total > 200 and same / total >= 0.995, same / total


# Evaluation seeds (>= 100000, never collected) on which the shipped policy succeeds in
# process (from its 50-seed evaluation); a changed model, tokenizer or control rule that
# breaks one shows up here. pick_block and place_in_bowl are absent: the shipped policy
# solved none of their 50 evaluation seeds (docs/model-card.md).
SHIPPED_SEEDS = {'push_block': (100043, 100043), 'drive_to_marker': (100000, 100001),
                 'gripper': (100000, 100001)}


@pytest.mark.parametrize('task', sorted(SHIPPED_SEEDS))
def test_shipped_policy_succeeds_in_process(shipped, task):
    from vla_ros.learning.evaluate import evaluate_policy
    lo, hi = SHIPPED_SEEDS[task]
    result = evaluate_policy(SHIPPED, [task], episodes=hi - lo + 1, seeds=(lo, hi + 1),
                             combos='all', gifs=False, quiet=True)
    r = result['tasks'][task]
    assert r['successes'] == r['episodes'], r
