"""Tests for tumorlib.nn.unet: parameter count, shapes, padding inside, layer table."""

from __future__ import annotations

import pytest
import torch

from tumorlib.core.config import get_config
from tumorlib.nn.unet import DoubleConv3D, Down3D, Up3D, UNet3D, count_parameters, layer_table, model_from_config

SMALL = (4, 8, 16, 32)


def test_default_parameter_count_is_the_diagrams():
    # the seed's diagram: 22,577,987 (its text said "about 11 million")
    model = UNet3D()
    assert count_parameters(model) == 22_577_987
    assert model.features == (32, 64, 128, 256)


def test_block_parameter_counts_by_hand():
    # conv 3x3x3 with bias: in*out*27 + out; InstanceNorm3d has no affine parameters by default
    assert count_parameters(DoubleConv3D(4, 32)) == (4 * 32 * 27 + 32) + (32 * 32 * 27 + 32)
    assert count_parameters(Down3D(32, 64)) == (32 * 64 * 27 + 64) + (64 * 64 * 27 + 64)
    # transposed conv 2x2x2: in*out*8 + out, then DoubleConv3D(2*out, out)
    assert count_parameters(Up3D(64, 32)) == (64 * 32 * 8 + 32) + (64 * 32 * 27 + 32) + (32 * 32 * 27 + 32)


def test_blocks_use_instancenorm_and_leakyrelu():
    block = DoubleConv3D(2, 3)
    kinds = [type(m) for m in block.block]
    assert kinds == [torch.nn.Conv3d, torch.nn.InstanceNorm3d, torch.nn.LeakyReLU] * 2
    assert block.block[2].negative_slope == 0.01


@pytest.mark.parametrize("size", [(16, 32, 32), (20, 33, 17), (1, 1, 17)])
def test_output_shape_matches_input_any_size(size):
    torch.manual_seed(0)
    model = UNet3D(4, 3, SMALL).eval()  # eval: a 1x1x1 bottleneck has no instance statistics to train on
    with torch.no_grad():
        y = model(torch.randn(2, 4, *size))
    assert y.shape == (2, 3, *size)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_odd_size_equals_explicit_zero_padding_then_crop():
    torch.manual_seed(0)
    model = UNet3D(4, 3, SMALL).eval()
    x = torch.randn(1, 4, 13, 30, 18)
    padded = torch.nn.functional.pad(x, (0, 14, 0, 2, 0, 3))  # to 16 x 32 x 32
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[:, :, :13, :30, :18], atol=1e-6)


def test_size_multiple_follows_depth():
    assert UNet3D().size_multiple == 16
    assert UNet3D(features=(4, 8)).size_multiple == 4
    y = UNet3D(features=(4, 8))(torch.randn(1, 4, 6, 5, 7))
    assert y.shape == (1, 3, 6, 5, 7)


def test_bad_input_is_refused():
    model = UNet3D(4, 3, SMALL)
    with pytest.raises(ValueError, match=r"\(B, 4, D, H, W\)"):
        model(torch.randn(1, 3, 16, 16, 16))
    with pytest.raises(ValueError):
        model(torch.randn(4, 16, 16, 16))
    with pytest.raises(ValueError, match="single voxel"):
        model(torch.randn(1, 4, 16, 9, 1))
    with pytest.raises(ValueError, match="features"):
        UNet3D(features=())


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = UNet3D(4, 3, SMALL)
    model(torch.randn(1, 4, 16, 32, 32)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_skip_connection_changes_output():
    # the decoder must see the encoder: perturbing only the input's top-left voxel changes the output there
    torch.manual_seed(0)
    model = UNet3D(4, 3, SMALL).eval()
    x = torch.randn(1, 4, 16, 32, 32)
    x2 = x.clone()
    x2[..., 0, 0, 0] += 5.0
    with torch.no_grad():
        assert not torch.allclose(model(x)[..., 0, 0, 0], model(x2)[..., 0, 0, 0])


def test_model_from_config_and_layer_table():
    cfg = get_config("ci")
    model = model_from_config(cfg)
    assert model.features == tuple(cfg.features)
    table = layer_table(model, cfg.patch_size)
    assert list(table.columns) == ["stage", "layers", "in_channels", "out_channels", "output_size",
                                   "parameters"]
    assert list(table.stage) == ["inc", "down1", "down2", "down3", "bottleneck", "up1", "up2", "up3", "up4",
                                 "head", "total"]
    assert table.parameters.iloc[-1] == count_parameters(model) == table.parameters.iloc[:-1].sum()
    assert table.set_index("stage").loc["bottleneck", "output_size"] == "1x2x2"  # (16, 32, 32) / 16
    assert table.set_index("stage").loc["bottleneck", "out_channels"] == 2 * cfg.features[-1]
    full = layer_table(UNet3D(), (64, 160, 160)).set_index("stage")
    assert full.loc["total", "parameters"] == 22_577_987
    assert full.loc["bottleneck", "parameters"] == 10_617_856
    assert full.loc["up4", "output_size"] == "64x160x160"
