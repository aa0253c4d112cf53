"""Demonstration datasets: LeRobotDataset v3 write/read, resume, deterministic collection."""

import json
import os

import numpy as np
import pytest

pytest.importorskip('pyarrow')
pytest.importorskip('av')

from vla_ros.learning import collect, dataset as ds, instructions  # noqa: E402
from vla_ros.paths import share_file  # noqa: E402

# Joint deltas (config/action_space_joint.yaml): the recorded state is the previous state
# plus the label, exactly (the shipped tool deltas go through IK).
JOINT = share_file('config', 'action_space_joint.yaml')


def _frames(rng, n):
    return [ds.Frame(image=rng.integers(0, 256, (300, 300, 3), dtype=np.uint8),
                     state=rng.normal(size=11), joint_state=rng.normal(size=8),
                     action=rng.normal(size=11),
                     tokens=rng.integers(0, 256, 11).astype(np.uint8)) for _ in range(n)]


def test_write_read_round_trip_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    root = str(tmp_path / 'data')
    episodes = [_frames(rng, 5), _frames(rng, 3), _frames(rng, 4)]
    writer = ds.DatasetWriter(root, 5, {'vla_ros.source': 'test'})
    writer.add_episode(episodes[0], 'pick up the red block', {'task': 'pick_block', 'seed': 1})
    writer.add_episode(episodes[1], 'open the gripper', {'task': 'gripper', 'seed': 2})
    writer.close()
    # A second session (resume) appends its own data and video files.
    writer = ds.DatasetWriter(root, 5, {'vla_ros.source': 'test'})
    assert len(writer.episodes) == 2
    writer.add_episode(episodes[2], 'pick up the red block', {'task': 'pick_block', 'seed': 3})
    writer.close()
    info = json.load(open(os.path.join(root, 'meta', 'info.json')))
    assert info['codebase_version'] == 'v3.0' and info['fps'] == 5
    assert info['total_episodes'] == 3 and info['total_frames'] == 12
    assert info['features'][ds.IMAGE_KEY]['dtype'] == 'video'
    loaded = ds.load(root)
    assert loaded.tasks == ['pick up the red block', 'open the gripper']
    assert [e['seed'] for e in loaded.episodes] == [1, 2, 3]
    flat = [f for e in episodes for f in e]
    np.testing.assert_array_equal(loaded.columns['episode_index'], [0] * 5 + [1] * 3 + [2] * 4)
    np.testing.assert_array_equal(loaded.columns[ds.TOKENS_KEY], [f.tokens for f in flat])
    np.testing.assert_allclose(loaded.columns[ds.STATE_KEY], [f.state for f in flat],
                               rtol=1e-6)
    images = {(e['episode_index'], i): img
              for e, i, img in ds.iter_episode_images(root, loaded.episodes)}
    assert len(images) == 12
    k = 0
    for e, frames in enumerate(episodes):
        for i, f in enumerate(frames):
            # libx264rgb at crf 0 is lossless: the frames come back bit for bit.
            np.testing.assert_array_equal(images[(e, i)], f.image)
            k += 1
    with pytest.raises(ValueError, match='fps'):
        ds.DatasetWriter(root, 10)


def test_release_zone_is_recorded_and_a_resume_with_another_is_refused(tmp_path):
    root = str(tmp_path / 'zone')
    plan = {'place_in_bowl': 1}
    done = collect.collect(root, plan, seed_start=100, quiet=True, expert_kind='reactive',
                           release_xy=0.025)
    assert done['episodes'] == 1
    assert ds.read_info(root)['vla_ros.release_xy'] == 0.025
    assert ds.read_info(root)['vla_ros.place_carry'] == 'high'
    with pytest.raises(ValueError, match='release_xy'):
        collect.collect(root, {'place_in_bowl': 2}, seed_start=100, quiet=True,
                        expert_kind='reactive')
    with pytest.raises(ValueError, match='place_carry'):
        collect.collect(root, {'place_in_bowl': 2}, seed_start=100, quiet=True,
                        expert_kind='reactive', release_xy=0.025, place_carry='low')
    with pytest.raises(ValueError, match='reactive'):
        collect.collect(str(tmp_path / 'phases'), plan, seed_start=100, quiet=True,
                        release_xy=0.025)


def test_collection_is_deterministic_resumable_and_skips_held_out(tmp_path):
    plan = {'gripper': 2, 'push_block': 3}
    # Joint deltas: the recorded state chains on the label by plain addition (below).
    a = collect.collect(str(tmp_path / 'a'), plan, seed_start=40, quiet=True,
                        action_space_file=JOINT)
    b = collect.collect(str(tmp_path / 'b'), plan, seed_start=40, quiet=True,
                        action_space_file=JOINT)
    assert a['frames'] == b['frames'] > 0
    da, db = ds.load(str(tmp_path / 'a')), ds.load(str(tmp_path / 'b'))
    np.testing.assert_array_equal(da.columns[ds.TOKENS_KEY], db.columns[ds.TOKENS_KEY])
    np.testing.assert_array_equal(da.columns[ds.STATE_KEY], db.columns[ds.STATE_KEY])
    for e in da.episodes:
        assert e['success'] and not instructions.is_held_out(e['task'], e)
    # Held-out (task, colour) pairs never reach the training data.
    assert a['episodes'] + a['skipped_held_out'] == 5
    # Running again resumes: nothing new is collected.
    again = collect.collect(str(tmp_path / 'a'), plan, seed_start=40, quiet=True,
                            action_space_file=JOINT)
    assert again['resumed'] + again['skipped_held_out'] == 5 and again['episodes'] == 0
    # The recorded state is the previous commanded target: frame 0 starts from the
    # measured arm; each next state is the previous state plus the action, or the measured
    # arm again when the target ran more than max_deviation ahead (core/targets.py).
    cols = da.columns
    state, measured = cols[ds.STATE_KEY][:, :7], cols[ds.JOINT_KEY][:, :7]
    first = np.flatnonzero(cols['frame_index'] == 0)
    np.testing.assert_allclose(state[first], measured[first], atol=1e-6)
    chained = 0
    for i in range(1, len(cols['index'])):
        if cols['frame_index'][i] == 0:
            continue
        composed = state[i - 1] + _detok(cols[ds.TOKENS_KEY][i - 1])[:7]
        if np.allclose(state[i], composed, atol=1e-5):
            chained += 1
        else:
            np.testing.assert_allclose(state[i], measured[i], atol=1e-6)
    assert chained >= 0.9 * (len(cols['index']) - len(first))


def _detok(tokens):
    from vla_ros.core.action_space import ActionSpace, ActionTokenizer
    return ActionTokenizer(ActionSpace.from_yaml(JOINT)).detokenize(
        np.asarray(tokens, dtype=np.int64))


def test_instruction_templates():
    params = {'colour': 'green', 'direction': 'left', 'sign': 1.0}
    train = instructions.training_phrasings('push_block', params)
    assert 'push the green block to the left' in train and len(train) >= 4
    held = {instructions.fill(t, instructions.slots('push_block', params))
            for t in instructions.HELD_OUT['push_block']}
    assert not held & set(train)
    grip = instructions.training_phrasings('gripper', {'close': True})
    assert 'shut the gripper' in grip and 'close the hand' in grip
    assert instructions.is_held_out('push_block', {'colour': 'green'})
    with pytest.raises(ValueError, match='colour'):
        instructions.fill('pick up the {colour} block', {})


def test_arm_noise_perturbs_the_executed_delta_and_spares_gripper_events():
    from vla_ros.core.action_space import ActionSpace, ActionTokenizer
    space = ActionSpace.from_yaml(JOINT)
    tokenizer = ActionTokenizer(space)
    noise = collect.ArmNoise(0.03, space, tokenizer)
    noise.reset('pick_block', 7)
    values = np.zeros(11)
    labels = tokenizer.tokenize(values)
    executed = [noise(values, labels) for _ in range(5)]
    # Arm dimensions move (by ~0.03 rad / 2.3 mrad per bin), base and gripper never do.
    for tokens in executed:
        assert np.any(tokens[:7] != labels[:7])
        np.testing.assert_array_equal(tokens[7:], labels[7:])
    deltas = tokenizer.detokenize(np.stack(executed).astype(np.int64))[:, :7]
    assert 0.01 < deltas.std() < 0.06
    # The gripper closes: that tick and the NOISE_SPARE_TICKS after it run the clean label.
    closing = values.copy()
    closing[10] = 1.0
    closing_labels = tokenizer.tokenize(closing)
    for _ in range(collect.NOISE_SPARE_TICKS + 1):
        np.testing.assert_array_equal(noise(closing, closing_labels), closing_labels)
    assert np.any(noise(closing, closing_labels)[:7] != closing_labels[:7])
    # The expert's precision phases run clean too.
    for phase in collect.NOISE_SPARED_PHASES:
        np.testing.assert_array_equal(noise(closing, closing_labels, phase), closing_labels)
    assert np.any(noise(closing, closing_labels, 'pregrasp')[:7] != closing_labels[:7])
    # Same (seed, task) → same draws; another seed → others.
    again = collect.ArmNoise(0.03, space, tokenizer)
    again.reset('pick_block', 7)
    np.testing.assert_array_equal(again(values, labels), executed[0])
    again.reset('pick_block', 8)
    assert np.any(again(values, labels) != executed[0])
    with pytest.raises(ValueError):
        collect.ArmNoise(-0.1, space, tokenizer)


def test_arm_noise_phases_perturb_only_the_phases_named():
    from vla_ros.core.action_space import ActionSpace, ActionTokenizer
    space = ActionSpace.from_yaml(JOINT)
    tokenizer = ActionTokenizer(space)
    values = np.zeros(11)
    labels = tokenizer.tokenize(values)
    everywhere = collect.ArmNoise(0.03, space, tokenizer)
    carry = collect.ArmNoise(0.03, space, tokenizer, ['lift', 'carry'])
    everywhere.reset('place_in_bowl', 3)
    carry.reset('place_in_bowl', 3)
    for phase in ('pregrasp', 'lift', 'carry', 'retreat', 'lower'):
        all_phases, named = everywhere(values, labels, phase), carry(values, labels, phase)
        if phase in ('lift', 'carry'):  # the same draw as unrestricted noise
            np.testing.assert_array_equal(named, all_phases)
            assert np.any(named[:7] != labels[:7])
        else:  # clean, and the draws stay in step with the unrestricted generator
            np.testing.assert_array_equal(named, labels)
    # A precision phase cannot be named; an empty list or no sigma is refused.
    for phases, sigma in ((['lower'], 0.03), (['carry', 'fly'], 0.03), ([], 0.03),
                          (['carry'], 0.0)):
        with pytest.raises(ValueError, match='arm-noise'):
            collect.ArmNoise(sigma, space, tokenizer, phases)


def test_noisy_collection_leaves_the_expert_path_with_clean_labels(tmp_path):
    plan = {'push_block': 2}
    clean = collect.collect(str(tmp_path / 'clean'), plan, seed_start=60, quiet=True,
                            action_space_file=JOINT)
    noisy = collect.collect(str(tmp_path / 'noisy'), plan, seed_start=60, quiet=True,
                            arm_noise=0.03, action_space_file=JOINT)
    again = collect.collect(str(tmp_path / 'again'), plan, seed_start=60, quiet=True,
                            arm_noise=0.03, action_space_file=JOINT)
    assert clean['episodes'] + clean['skipped_held_out'] == 2
    assert noisy['episodes'] == again['episodes'] and noisy['frames'] == again['frames']
    dn, da = ds.load(str(tmp_path / 'noisy')), ds.load(str(tmp_path / 'again'))
    np.testing.assert_array_equal(dn.columns[ds.STATE_KEY], da.columns[ds.STATE_KEY])
    assert ds.read_info(str(tmp_path / 'noisy'))['vla_ros.arm_noise'] == 0.03
    # A folder collected with another noise level is not resumed into.
    with pytest.raises(ValueError):
        collect.collect(str(tmp_path / 'noisy'), plan, seed_start=60, quiet=True,
                        action_space_file=JOINT)
    # The recorded state is what was executed: it no longer follows state + label (the
    # label is the clean correction), for most ticks away from gripper events.
    cols = dn.columns
    state = cols[ds.STATE_KEY][:, :7]
    off_path = 0
    steps = 0
    for i in range(1, len(cols['index'])):
        if cols['frame_index'][i] == 0:
            continue
        steps += 1
        composed = state[i - 1] + _detok(cols[ds.TOKENS_KEY][i - 1])[:7]
        off_path += not np.allclose(state[i], composed, atol=1e-5)
    assert steps and off_path >= 0.5 * steps


def _grasps(commanded_gripper):
    """Count the closings of a commanded gripper sequence (0 open, 1 closed)."""
    closed = np.asarray(commanded_gripper) >= 0.5
    return int(np.sum(closed[1:] & ~closed[:-1]))


def test_place_miss_records_the_second_attempt_from_where_the_block_fell(tmp_path):
    """
    Check ``place_miss``: a misled first attempt lets go of the block off the bowl.

    It is driven, not recorded: the episode starts with the block where it fell and shows
    one grasp, the clean expert's, which ends with the block in the bowl.
    """
    plan = {'place_in_bowl': 2}
    kw = {'seed_start': 1, 'quiet': True, 'expert_kind': 'reactive'}
    missed = collect.collect(str(tmp_path / 'miss'), plan, place_miss=1.0, **kw)
    collect.collect(str(tmp_path / 'again'), plan, place_miss=1.0, **kw)
    clean = collect.collect(str(tmp_path / 'clean'), plan, **kw)
    assert missed['episodes'] == missed['misled_episodes'] == 2
    assert clean['misled_episodes'] == 0 and clean['episodes'] == 2
    assert ds.read_info(str(tmp_path / 'miss'))['vla_ros.place_miss'] == 1.0
    assert 'vla_ros.place_miss' not in ds.read_info(str(tmp_path / 'clean'))
    dm, da = ds.load(str(tmp_path / 'miss')), ds.load(str(tmp_path / 'again'))
    dc = ds.load(str(tmp_path / 'clean'))
    np.testing.assert_array_equal(dm.columns[ds.STATE_KEY], da.columns[ds.STATE_KEY])
    for e in range(2):
        assert dm.episodes[e]['seed'] == dc.episodes[e]['seed']
        assert dm.episodes[e]['success'] and dc.episodes[e]['success']
        rows_m = dm.columns['episode_index'] == e
        rows_c = dc.columns['episode_index'] == e
        # The executed gripper (the state is the previous commanded target) closes once
        # in both: the misled grasp is not in the recording.
        assert _grasps(dm.columns[ds.STATE_KEY][rows_m, 10]) == 1
        assert _grasps(dc.columns[ds.STATE_KEY][rows_c, 10]) == 1
        # The recording starts with the block where the misled attempt let it go.
        start_m = dm.columns[ds.TARGET_KEY][rows_m][0]
        start_c = dc.columns[ds.TARGET_KEY][rows_c][0]
        assert np.linalg.norm(start_m[:2] - start_c[:2]) > 0.05
    with pytest.raises(ValueError, match='place_miss'):  # another fraction: not resumed into
        collect.collect(str(tmp_path / 'miss'), {'place_in_bowl': 3}, place_miss=0.5, **kw)
    with pytest.raises(ValueError, match='reactive'):
        collect.collect(str(tmp_path / 'phases'), plan, seed_start=0, quiet=True,
                        place_miss=0.5)
    for bad in (-0.1, 1.5, float('nan')):
        with pytest.raises(ValueError, match='place-miss'):
            collect.collect(str(tmp_path / 'bad'), plan, place_miss=bad, **kw)


def test_a_lerobot_reader_gets_the_instruction_text_and_the_chunked_files(tmp_path):
    """Read the dataset the way LeRobot v3 does: info.json paths, pandas, PyAV."""
    import av
    import pandas as pd
    rng = np.random.default_rng(1)
    root = str(tmp_path / 'data')
    texts = ['pick up the red block', 'open the gripper', 'push the blue block to the left']
    episodes = []
    # chunks_size 2: the third session's files go to chunk-001, as info.json declares.
    for session, text in enumerate(texts):
        writer = ds.DatasetWriter(root, 5, {'vla_ros.source': 'test'}, chunks_size=2)
        frames = _frames(rng, 3 + session)
        writer.add_episode(frames, text, {'task': 'x', 'seed': session})
        writer.close()
        episodes.append(frames)
    info = json.load(open(os.path.join(root, 'meta', 'info.json')))
    assert info['chunks_size'] == 2
    tasks = pd.read_parquet(os.path.join(root, 'meta', 'tasks.parquet'))
    meta = pd.read_parquet(os.path.join(root, 'meta', 'episodes', 'chunk-000',
                                        'file-000.parquet'))
    assert [tuple(r) for r in meta[['data/chunk_index', 'data/file_index']].values] == [
        (0, 0), (0, 1), (1, 0)]
    for ep, row in meta.iterrows():
        data = pd.read_parquet(os.path.join(root, info['data_path'].format(
            chunk_index=row['data/chunk_index'], file_index=row['data/file_index'])))
        data = data[data['episode_index'] == row['episode_index']]
        assert len(data) == row['length'] == len(episodes[ep])
        # LeRobot: the task text is the index entry at the frame's task_index.
        assert {tasks.iloc[int(i)].name for i in data['task_index']} == {texts[ep]}
        key = ds.IMAGE_KEY
        video = os.path.join(root, info['video_path'].format(
            video_key=key, chunk_index=row[f'videos/{key}/chunk_index'],
            file_index=row[f'videos/{key}/file_index']))
        with av.open(video) as container:
            decoded = [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]
        first = int(round(row[f'videos/{key}/from_timestamp'] * info['fps']))
        for i, frame in enumerate(episodes[ep]):
            np.testing.assert_array_equal(decoded[first + i], frame.image)
    # The project's own reader sees the same, across chunks.
    loaded = ds.load(root)
    assert len(loaded) == sum(len(e) for e in episodes) and loaded.tasks == texts
    seen = list(ds.iter_episode_images(root, loaded.episodes))
    assert len(seen) == len(loaded)
    np.testing.assert_array_equal(seen[-1][2], episodes[-1][-1].image)


def test_collect_writes_the_training_cache_equal_to_the_decoded_frames(tmp_path):
    """--cache saves what training would decode from the lossless videos, bit for bit."""
    from vla_ros.learning import train_data
    root = str(tmp_path / 'cached')
    collect.collect(root, {'pick_block': 2, 'gripper': 1}, seed_start=11, quiet=True,
                    cache_factors=[3])
    path = train_data.cache_path(root, 3)
    written = np.load(path)
    os.remove(path)
    decoded = train_data.image_cache(root, 3, ds.load(root).episodes, quiet=True)
    assert written.shape == decoded.shape and written.shape[1:] == (100, 100, 3)
    assert np.array_equal(written, decoded)
    with pytest.raises(ValueError, match='new folder'):
        collect.collect(root, {'pick_block': 3}, seed_start=11, quiet=True, cache_factors=[3])
