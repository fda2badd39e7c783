"""Tests for hazematching.nets.convert: torchcfm UNetModel weights give identical outputs."""

from typing import Literal

import pytest
import torch
from torchcfm.models.unet.unet import UNetModel

from hazematching.config import NetworkConfig
from hazematching.nets import UNet
from hazematching.nets.convert import convert_torchcfm_state_dict, network_config_from_torchcfm


def _torchcfm_unet(image_size: int, channel_mult: tuple[int, ...], **kwargs: object) -> UNetModel:
    """The published HazeMatching network with every parameter (zero-initialised too) random."""
    options = dict(
        image_size=image_size,
        in_channels=2,
        model_channels=32,
        out_channels=1,
        num_res_blocks=1,
        attention_resolutions=(image_size // 16,),
        dropout=0.0,
        channel_mult=channel_mult,
        num_heads=1,
        num_head_channels=-1,
        use_scale_shift_norm=False,
        resblock_updown=False,
    )
    options.update(kwargs)
    torch.manual_seed(0)
    net = UNetModel(**options)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1.0, 0.05)
                module.bias.normal_(0.0, 0.05)
            else:
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, 0.05)
    return net.eval()


def _assert_same_outputs(ref: UNetModel, net: UNet, size: int) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, size, size, generator=gen)
    t = torch.rand(2, generator=gen)
    with torch.no_grad():
        expected, got = ref(t, x), net(t, x)
    assert expected.abs().max() > 0.1  # a trivially-zero output would prove nothing
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("size", "mult"), [(128, (1, 1, 2, 3, 4)), (64, (1, 2, 3, 4))])
def test_published_network_outputs_match(size: int, mult: tuple[int, ...]) -> None:
    ref = _torchcfm_unet(size, mult)
    config = network_config_from_torchcfm(size, mult)
    net = UNet(2, 1, config).eval()
    net.load_state_dict(convert_torchcfm_state_dict(ref.state_dict(), config), strict=True)
    _assert_same_outputs(ref, net, size)


@pytest.mark.parametrize("order", ["legacy", "new"])
def test_multi_head_attention_orders(order: Literal["legacy", "new"]) -> None:
    ref = _torchcfm_unet(16, (1, 2), attention_resolutions=(1, 2), num_heads=4,
                         num_res_blocks=2, use_new_attention_order=order == "new")
    config = NetworkConfig(channel_mult=(1, 2), num_res_blocks=2, attention_downsample=(1, 2),
                           num_heads=4)
    net = UNet(2, 1, config).eval()
    state = convert_torchcfm_state_dict(ref.state_dict(), config, attention_order=order)
    net.load_state_dict(state, strict=True)
    _assert_same_outputs(ref, net, 16)


def test_network_config_from_torchcfm() -> None:
    config = network_config_from_torchcfm(128, [1, 1, 2, 3, 4])
    assert config == NetworkConfig()
    assert network_config_from_torchcfm(64, (1, 2, 3, 4)).attention_downsample == (4,)
    with pytest.raises(ValueError, match="multiple of 16"):
        network_config_from_torchcfm(40, (1, 2))


@pytest.fixture(scope="module")
def small() -> tuple[dict[str, torch.Tensor], NetworkConfig]:
    ref = _torchcfm_unet(32, (1, 2), attention_resolutions=(2,))
    return ref.state_dict(), NetworkConfig(channel_mult=(1, 2), attention_downsample=(2,))


def test_missing_key_is_named(small: tuple[dict[str, torch.Tensor], NetworkConfig]) -> None:
    state, config = small
    state = {k: v for k, v in state.items() if k != "middle_block.1.qkv.weight"}
    with pytest.raises(KeyError, match=r"middle_block\.1\.qkv\.weight.*middle\.attn\.qkv\.weight"):
        convert_torchcfm_state_dict(state, config)


def test_unexpected_key_is_named(small: tuple[dict[str, torch.Tensor], NetworkConfig]) -> None:
    state, config = small
    with pytest.raises(KeyError, match=r"label_emb\.weight"):
        convert_torchcfm_state_dict({**state, "label_emb.weight": torch.zeros(3, 128)}, config)


def test_config_mismatch_is_named(small: tuple[dict[str, torch.Tensor], NetworkConfig]) -> None:
    state, _ = small
    # Attention at the wrong level: the torchcfm attention keys are not explained.
    wrong = NetworkConfig(channel_mult=(1, 2), attention_downsample=(1,))
    with pytest.raises(KeyError, match=r"input_blocks\.3\.1\."):
        convert_torchcfm_state_dict(state, wrong)


def test_shape_mismatch_is_named(small: tuple[dict[str, torch.Tensor], NetworkConfig]) -> None:
    state, _ = small
    wider = NetworkConfig(channel_mult=(1, 3), attention_downsample=(2,))
    with pytest.raises(ValueError, match=r"input_blocks\.3\.0\.in_layers\.2\.weight.*shape"):
        convert_torchcfm_state_dict(state, wider)


def test_prefixed_state_dict_is_rejected(
    small: tuple[dict[str, torch.Tensor], NetworkConfig],
) -> None:
    state, config = small
    with pytest.raises(KeyError, match="wrapper prefix"):
        convert_torchcfm_state_dict({f"model.{k}": v for k, v in state.items()}, config)
