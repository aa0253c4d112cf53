"""The oracle-state policy: privileged state, fitting the expert, closed-loop evaluation."""

import json

import numpy as np
import pytest

pytest.importorskip('torch')

from vla_ros.learning import chunks, oracle  # noqa: E402


@pytest.fixture(scope='module')
def scene():
    s = oracle.Scene(None, None, arm_noise=0.03)
    yield s
    s.close()


def test_privileged_state_names_the_object_and_task(scene):
    x, y, episode, stats = oracle.collect_states(
        scene, {'push_block': 2, 'drive_to_marker': 1}, 70)
    assert x.shape[1] == oracle.STATE_DIM and np.isfinite(x).all()
    assert episode.shape == (len(x),) and np.all(np.diff(episode) >= 0)
    assert episode[-1] == stats['episodes'] - 1
    assert y.shape == (len(x), 11) and y.min() >= 0 and y.max() <= 255
    assert stats['episodes'] + stats['expert_failures'] + stats['skipped_held_out'] == 3
    task_block = x[:, 41:46]
    # Every row carries exactly one task; push rows carry a push sign, drive rows a marker.
    np.testing.assert_array_equal(task_block.sum(1), 1.0)
    push = task_block[:, 2] == 1.0
    assert np.all(np.abs(x[push, 46]) == 1.0)
    assert np.all(np.abs(x[~push, 32:34]).sum(1) > 0)


def test_the_mlp_fits_the_expert_and_runs_closed_loop(scene):
    x, y, _, _ = oracle.collect_states(scene, {'push_block': 3}, 80)
    policy, loss = oracle.train_mlp(x, y, steps=400, batch=64)
    predicted = np.stack([policy(s) for s in x])
    assert predicted.dtype == np.uint8 and predicted.shape == y.shape
    # Most labels are reproduced within one bin on the states it was trained on.
    within_one = np.abs(predicted.astype(int) - y) <= 1
    assert within_one.mean() > 0.6, within_one.mean()
    results = oracle.evaluate_policy(scene, policy, ['push_block'], 1)
    r = results['push_block']
    assert r['episodes'] == 1 and r['successes'] in (0, 1)
    assert 0.0 <= r['interval'][0] <= r['interval'][1] <= 1.0


def test_drop_idle_leaves_out_the_expert_waits_only(scene):
    x, y, episode, _ = oracle.collect_states(scene, {'pick_block': 1}, 90)
    # The privileged state carries the previous commanded gripper where the drop reads it.
    assert set(np.unique(x[:, oracle.PREVIOUS_GRIPPER])) <= {0.0, 1.0}
    labels = chunks.chunk_labels(y, episode, 2)
    kept_x, kept, dropped = oracle.without_idle(x, y, labels, scene.space)
    assert 0 < dropped < len(x) and len(kept_x) == len(kept) == len(x) - dropped
    values = scene.tokenizer.detokenize(y)
    half = (scene.space.high - scene.space.low)[:7] / 2.0  # within 2.5 % of each half-range
    idle = np.all(np.abs(values[:, :7]) <= 0.025 * half, axis=1) & np.all(
        values[:, 7:10] == 0.0, axis=1) & (values[:, 10] == x[:, oracle.PREVIOUS_GRIPPER])
    assert dropped == int(idle.sum())
    np.testing.assert_array_equal(kept, labels[~idle])


def test_chunk_labels_stay_inside_their_episode():
    y = np.arange(5 * 11).reshape(5, 11)
    episode = np.array([0, 0, 0, 1, 1])
    steps = chunks.chunk_labels(y, episode, 3).reshape(5, 3, 11)
    # Frame 1: its own label, the next, then the episode's last repeated.
    np.testing.assert_array_equal(steps[1, :, 0], [11, 22, 22])
    # Frame 2 is its episode's last: never the next episode's frame 3.
    np.testing.assert_array_equal(steps[2, :, 0], [22, 22, 22])
    np.testing.assert_array_equal(steps[3, :, 0], [33, 44, 44])
    assert chunks.chunk_labels(y, episode, 1) is y


def test_a_chunk_runner_executes_m_steps_then_predicts_again():
    calls = []

    def policy(state):
        calls.append(state)
        return np.repeat(np.arange(4, dtype=np.uint8) + 10 * len(calls), 11)

    runner = chunks.ChunkRunner(policy, k=4, execute=2)
    got = [int(runner(np.zeros(3))[0]) for _ in range(5)]
    assert got == [10, 11, 20, 21, 30] and len(calls) == 3
    runner.reset()
    assert int(runner(np.zeros(3))[0]) == 40


def test_dagger_rounds_add_the_learners_states_and_evaluate_each_policy(tmp_path):
    out = tmp_path / 'oracle.json'
    code = oracle.main(['--episodes', 'pick_block=2', '--dagger-episodes', 'pick_block=2',
                        '--dagger-rounds', '1', '--expert', 'reactive', '--steps', '50',
                        '--eval-episodes', '1', '--threads', '1', '--json', str(out)])
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary['expert'] == 'reactive'
    rounds = summary['rounds']
    assert [r['round'] for r in rounds] == [0, 1]
    # Round 1 trains on the clean frames plus every frame of the learner's two episodes.
    assert rounds[1]['frames'] > rounds[0]['frames']
    assert summary['results'] == rounds[1]['results']
    assert rounds[1]['results']['pick_block']['episodes'] == 1
    assert summary['seconds']['dagger_collect'] > 0.0


def test_oracle_refuses_a_negative_round_count(capsys):
    assert oracle.main(['--dagger-rounds', '-1']) == 2
    assert '--dagger-rounds' in capsys.readouterr().err


def test_oracle_refuses_noise_phases_it_cannot_perturb(capsys):
    assert oracle.main(['--arm-noise', '0.02', '--arm-noise-phases', 'lift,lower']) == 2
    assert '--arm-noise-phases' in capsys.readouterr().err
    assert oracle.main(['--arm-noise-phases', 'carry']) == 2
    assert '--arm-noise' in capsys.readouterr().err
