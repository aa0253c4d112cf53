"""RT-1 network: configs, shapes, decoding modes, masking, seeded weights, FLOP counts."""

import pytest

from vla_ros.model.config import ConfigError, get_config, RT1Config, SEED, TINY

torch = pytest.importorskip('torch')

from vla_ros.model.flops import count_flops, count_parameters  # noqa: E402
from vla_ros.model.rt1 import build_policy, ImageNormalizer, weights_sha256  # noqa: E402


def _inputs(batch=1, seed=0, valid_text=6):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (batch, 300, 300, 3), dtype=torch.uint8, generator=gen)
    text = torch.randn(batch, 16, 384, generator=gen)
    mask = torch.zeros(batch, 16)
    mask[:, :valid_text] = 1.0
    return image, text, mask


@pytest.fixture(scope='module')
def tiny():
    return build_policy(TINY)


def test_configs_follow_the_chapter_geometry():
    for config in (SEED, TINY):
        assert config.feature_map_size == 19
        assert config.num_image_tokens == 81
        assert config.sequence_length == 97
        assert (config.encoder_layers, config.decoder_layers) == (8, 4)
    assert SEED.feature_channels == 2048 and SEED.d_model == 512
    assert SEED.stage_blocks == (3, 4, 6, 3)  # ResNet-50


def test_config_validation_names_the_problem():
    with pytest.raises(ConfigError, match='multiple of num_heads'):
        RT1Config(name='bad', d_model=100, num_heads=8)
    with pytest.raises(ConfigError, match='fixed by the I/O contract'):
        RT1Config(name='bad', num_actions=7)
    with pytest.raises(ConfigError, match='positive int'):
        RT1Config(name='bad', encoder_layers=0)
    with pytest.raises(ConfigError, match="expected one of .*'nano_nostate', 'seed'"):
        get_config('huge')


def test_seed_structure_feature_map_and_parameter_count():
    model = build_policy(SEED)
    image, _, _ = _inputs()
    with torch.no_grad():
        features = model.backbone(model.normalizer(image))
    assert tuple(features.shape) == (1, 2048, 19, 19)
    counts = count_parameters(model)
    # ResNet-50 without its classifier has 23.5 M parameters.
    assert counts['backbone'] == 23_508_032
    assert counts['total'] == 49_311_121


def test_tiny_outputs_logits_for_both_decodings(tiny):
    image, text, mask = _inputs(batch=2)
    with torch.no_grad():
        for mode in ('single', 'autoregressive'):
            tiny.decoding = mode
            logits = tiny(image, text, mask)
            assert tuple(logits.shape) == (2, 11, 256)
            assert torch.isfinite(logits).all()
            # Batch rows are independent.
            one = tiny(image[1:], text[1:], mask[1:])
            assert torch.allclose(logits[1:], one, atol=1e-5)
    tiny.decoding = 'single'


def test_greedy_decoding_equals_teacher_forcing_on_its_own_tokens(tiny):
    image, text, mask = _inputs(seed=3)
    with torch.no_grad():
        memory, bias = tiny.encode(image, text, mask)
        greedy = tiny.decode_autoregressive(memory, bias)
        forced = tiny.decode_teacher_forced(memory, bias, greedy.argmax(-1))
    assert torch.allclose(greedy, forced, atol=1e-5)


def test_autoregressive_token_depends_only_on_earlier_tokens(tiny):
    image, text, mask = _inputs(seed=4)
    tokens = torch.randint(0, 256, (1, 11), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[0, 6] = (changed[0, 6] + 17) % 256
    with torch.no_grad():
        memory, bias = tiny.encode(image, text, mask)
        a = tiny.decode_teacher_forced(memory, bias, tokens)
        b = tiny.decode_teacher_forced(memory, bias, changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)  # token 6 feeds position 7 on
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-6)


def test_padded_text_tokens_are_ignored(tiny):
    image, text, mask = _inputs(valid_text=5)
    noisy = text.clone()
    noisy[:, 5:] += 100.0
    with torch.no_grad():
        assert torch.allclose(tiny(image, text, mask), tiny(image, noisy, mask), atol=1e-5)
        # ... while a valid token does matter.
        noisy[:, 2] += 1.0
        assert not torch.allclose(tiny(image, text, mask), tiny(image, noisy, mask),
                                  atol=1e-5)


def test_image_is_normalised_inside_the_graph():
    image = torch.zeros(1, 2, 2, 3, dtype=torch.uint8)
    image[..., 0] = 255
    x = ImageNormalizer()(image)
    assert tuple(x.shape) == (1, 3, 2, 2)
    assert x[0, 0, 0, 0].item() == pytest.approx((1.0 - 0.485) / 0.229, rel=1e-5)
    assert x[0, 1, 0, 0].item() == pytest.approx(-0.456 / 0.224, rel=1e-5)


def test_token_learner_turns_the_map_into_81_tokens(tiny):
    features = torch.randn(2, tiny.backbone.out_channels, 19, 19)
    tokens = tiny.token_learner(features)
    assert tuple(tokens.shape) == (2, 81, TINY.d_model)


def test_seeded_weights_are_reproducible(tiny):
    assert weights_sha256(build_policy(TINY)) == weights_sha256(tiny)
    other = RT1Config(**dict(TINY.to_dict(), stage_widths=tuple(TINY.stage_widths),
                             stage_blocks=tuple(TINY.stage_blocks), seed=1))
    assert weights_sha256(build_policy(other)) != weights_sha256(tiny)


def test_checkpoint_must_fit_the_config(tiny):
    state = tiny.state_dict()
    state.pop('head.weight')
    with pytest.raises(ValueError, match='missing'):
        build_policy(TINY, state_dict=state)


def test_flop_count_is_positive_and_autoregressive_costs_more(tiny):
    image, text, mask = _inputs()
    single = count_flops(tiny, image, text, mask)
    tiny.decoding = 'autoregressive'
    try:
        greedy = count_flops(tiny, image, text, mask)
    finally:
        tiny.decoding = 'single'
    assert 0.5e9 < single < greedy
