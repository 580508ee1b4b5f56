"""The CIFAR networks through timm's registry: build, forward/backward at 32 px, parameter counts against the
published ones, and the timm model interface (pretrained_cfg, heads, features, torchscript, FX)."""
import math

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import create_feature_extractor

import cfl_timm  # noqa: F401  (registers the models)
from cfl_timm.data.constants import CIFAR10_MEAN, CIFAR10_STD
from cfl_timm.models import CIFAR_MODELS, ZeroPadShortcut

torch.set_num_threads(1)

# Published parameter counts for 10 classes: (count, significant digits as published, source). He et al. give
# two significant digits (Table 6); the reference code counts are exact.
PUBLISHED = {
    'resnet20_cifar': (0.27e6, 2, 'He et al. 2016, Table 6'),
    'resnet32_cifar': (0.46e6, 2, 'He et al. 2016, Table 6'),
    'resnet56_cifar': (0.85e6, 2, 'He et al. 2016, Table 6'),
    'resnet110_cifar': (1.7e6, 2, 'He et al. 2016, Table 6'),
    'resnet18_cifar': (11_173_962, None, 'focal_calibration Net/resnet.py resnet18'),
    'resnet34_cifar': (21_282_122, None, 'focal_calibration Net/resnet.py resnet34'),
    'resnet50_cifar': (23_520_842, None, 'focal_calibration Net/resnet.py resnet50'),
    'resnet101_cifar': (42_512_970, None, 'focal_calibration Net/resnet.py resnet101'),
    'wide_resnet28_10_cifar': (36.5e6, 3, 'Zagoruyko & Komodakis 2016, Table 1'),
    'densenet121_cifar': (6_956_298, None, 'focal_calibration Net/densenet.py densenet121'),
}

# Small members of each family for the costlier interface checks (torchscript, FX, features_only).
SMALL = [
    ('resnet20_cifar', {}),
    ('resnet18_cifar', dict(layers=(1, 1, 1, 1))),
    ('resnet50_cifar', dict(layers=(1, 1, 1, 1), block_args=dict(attn_layer='se'))),
    ('wide_resnet28_10_cifar', dict(depth=10, widen_factor=1, block_drop_rate=0.3)),
    ('densenet121_cifar', dict(growth_rate=8, block_config=(1, 2, 2, 1))),
]


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _he_count(n: int, num_classes: int = 10) -> int:
    """Closed form of the 6n+2 network: 3x3 convs + BN (2 per channel) + linear, option A (no shortcut weights)."""
    total = 3 * 16 * 9 + 2 * 16
    in_chs = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += in_chs * width * 9 + width * width * 9 + 4 * width
            in_chs = width
    return total + 64 * num_classes + num_classes


def test_registry_lists_every_cifar_model():
    assert sorted(timm.list_models('*cifar*')) == sorted(CIFAR_MODELS)
    assert not set(timm.list_models(pretrained=True)) & set(CIFAR_MODELS)


@pytest.mark.parametrize('name', CIFAR_MODELS)
def test_forward_backward_32px_and_interface(name):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for num_classes in (10, 100):
        model = timm.create_model(name, num_classes=num_classes)
        logits = model(x)
        assert logits.shape == (2, num_classes)
        logits.logsumexp(1).sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32) and cfg['num_classes'] == 10 and not cfg['url']
    assert tuple(cfg['mean']) == CIFAR10_MEAN and tuple(cfg['std']) == CIFAR10_STD and cfg['crop_pct'] == 1.0
    assert model.get_submodule(cfg['first_conv']).stride == (1, 1)  # the CIFAR stem
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[-2:] == cfg['pool_size'] and feats.shape[1] == model.num_features
        assert torch.allclose(model.forward_head(feats), model(x))
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        final, inter = model.forward_intermediates(x)
        assert len(inter) == len(model.feature_info)
        for t, info in zip(inter, model.feature_info):
            assert t.shape[1] == info['num_chs'] and t.shape[-1] == 32 // info['reduction']
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_parameter_count_matches_the_published_table(name):
    published, digits, source = PUBLISHED[name]
    count = _num_params(timm.create_model(name))
    if digits is None:  # an exact count of the reference code: within 1%
        assert abs(count - published) <= 0.01 * published, (count, source)
    else:  # a rounded figure: the count rounds to it, and it is within 1% where 3 digits are given
        scale = 10 ** (int(math.floor(math.log10(published))) - digits + 1)
        assert round(count / scale) * scale == pytest.approx(published), (count, source)
        if digits >= 3:
            assert abs(count - published) <= 0.01 * published, (count, source)


@pytest.mark.parametrize('name,n', [('resnet8_cifar', 1), ('resnet14_cifar', 2), ('resnet20_cifar', 3),
                                    ('resnet32_cifar', 5), ('resnet56_cifar', 9), ('resnet110_cifar', 18)])
def test_he_resnets_have_6n_plus_2_layers_and_option_a_parameters(name, n):
    model = timm.create_model(name, num_classes=100)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 6 * n + 2
    assert _num_params(model) == _he_count(n, 100)
    assert sum(isinstance(m, ZeroPadShortcut) for m in model.modules()) == 2


def test_zero_pad_shortcut_subsamples_and_appends_zero_channels():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    y = ZeroPadShortcut(3, 5, stride=2)(x)
    assert y.shape == (2, 5, 2, 2)
    assert torch.equal(y[:, :3], x[:, :, ::2, ::2]) and not y[:, 3:].any()
    with pytest.raises(ValueError, match='out_chs >= in_chs'):
        ZeroPadShortcut(4, 2)


def test_option_b_shortcut_and_timm_regularisers():
    conv_shortcut = timm.create_model('resnet20_cifar', shortcut='conv')
    assert _num_params(conv_shortcut) == _he_count(3) + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    model = timm.create_model('resnet20_cifar', drop_path_rate=0.2, block_args=dict(attn_layer='se'))
    blocks = [b for stage in model.stages for b in stage]
    assert blocks[0].drop_path is None and blocks[-1].drop_path.drop_prob == pytest.approx(0.2)
    assert all(type(b.se).__name__ == 'SEModule' for b in blocks)
    with pytest.raises(ValueError, match='shortcut'):
        timm.create_model('resnet20_cifar', shortcut='B')
    with pytest.raises(ValueError, match='stem'):
        timm.create_model('resnet18_cifar', stem_type='deep')
    with pytest.raises(ValueError, match='6n \\+ 4'):
        timm.create_model('wide_resnet28_10_cifar', depth=27)


def test_wide_resnet_dropout_sits_between_the_convolutions():
    model = timm.create_model('wide_resnet28_10_cifar', depth=10, widen_factor=1, block_drop_rate=0.3)
    block = model.stages[0].blocks[0]
    assert isinstance(block.norm2.drop, nn.Dropout) and block.norm2.drop.p == 0.3
    assert isinstance(block.norm1.drop, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        assert not torch.allclose(a, model(x))


@pytest.mark.parametrize('name,kwargs', SMALL)
def test_features_only_torchscript_and_fx(name, kwargs):
    x = torch.randn(2, 3, 32, 32)
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(torch.jit.script(model)(x), expected, atol=1e-5)
        traced = torch.fx.symbolic_trace(model)
        assert torch.allclose(traced(x), expected, atol=1e-5)
        last = model.feature_info[-1]['module']
        extractor = create_feature_extractor(model, return_nodes={last: 'out'})
        assert extractor(x)['out'].shape[1] == model.feature_info[-1]['num_chs']
        _, inter = model.forward_intermediates(x)
        for cls in ('list', 'fx'):
            features = timm.create_model(name, features_only=True, feature_cls=cls, **kwargs).eval()
            features.load_state_dict(model.state_dict(), strict=False)
            outs = features(x)
            assert features.feature_info.reduction() == [f['reduction'] for f in model.feature_info]
            assert [o.shape for o in outs] == [t.shape for t in inter]
        pruned = timm.create_model(name, **kwargs)
        assert pruned.prune_intermediate_layers([1]) == [1]
        assert pruned.eval()(x).shape == inter[1].shape


def test_pretrained_is_a_clear_error_and_files_load(tmp_path):
    with pytest.raises(ValueError, match='No pretrained weights exist for .resnet20_cifar.*--initial-checkpoint'):
        timm.create_model('resnet20_cifar', pretrained=True)
    source = timm.create_model('resnet20_cifar', num_classes=100)
    path = tmp_path / 'weights.pth'
    torch.save(source.state_dict(), path)
    from_overlay = timm.create_model('resnet20_cifar', pretrained=True, num_classes=100,
                                     pretrained_cfg_overlay=dict(file=str(path), num_classes=100))
    from_checkpoint = timm.create_model('resnet20_cifar', num_classes=100, checkpoint_path=str(path))
    for loaded in (from_overlay, from_checkpoint):
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
