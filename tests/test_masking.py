"""The MAE built from a config masks exactly the configured share of patches, reproducibly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from leanmae.config import PretrainConfig, resolve
from leanmae.errors import CheckpointError
from leanmae.models.mae import build_mae, mae_config, masking_noise, num_patches


@pytest.fixture(scope="module")
def test_model_config():
    return resolve(PretrainConfig, "pretrain", "test", None, {}).model


def test_test_preset_model_has_16_patches(test_model_config) -> None:
    config = mae_config(test_model_config)
    assert num_patches(config) == (32 // 8) ** 2 == 16
    assert config.hidden_size == 32 and config.num_hidden_layers == 2


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.6, 0.3, 0.9])
def test_mask_keeps_round_down_of_L_times_one_minus_ratio_visible_patches(
    test_model_config, ratio: float
) -> None:
    torch.manual_seed(0)
    model = build_mae(dataclasses.replace(test_model_config, mask_ratio=ratio)).eval()
    batch, length = 5, num_patches(model.config)
    pixels = torch.randn(batch, 3, 32, 32)
    noise = masking_noise(0, 0, np.arange(batch), model.config, "cpu")
    with torch.no_grad():
        out = model(pixel_values=pixels, noise=noise)
    assert out.mask.shape == (batch, length)
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    visible = int(length * (1 - ratio))
    assert (1 - out.mask).sum(dim=1).tolist() == [visible] * batch, "1 marks a masked patch, 0 a visible one"
    assert out.logits.shape == (batch, length, 8 * 8 * 3)
    assert torch.isfinite(out.loss)


def test_masking_noise_is_keyed_by_seed_epoch_and_image(test_model_config) -> None:
    config = mae_config(test_model_config)
    a = masking_noise(3, 1, np.arange(4), config, "cpu")
    assert a.shape == (4, 16)
    assert torch.equal(a, masking_noise(3, 1, np.arange(4), config, "cpu"))
    assert torch.equal(a[2:], masking_noise(3, 1, np.array([2, 3]), config, "cpu")), (
        "an image's mask does not depend on its batch"
    )
    assert not torch.equal(a, masking_noise(3, 2, np.arange(4), config, "cpu")), "a new epoch draws new masks"
    assert not torch.equal(a, masking_noise(4, 1, np.arange(4), config, "cpu")), (
        "another seed draws other masks"
    )


def test_same_noise_gives_the_same_mask(test_model_config) -> None:
    model = build_mae(test_model_config).eval()
    pixels = torch.randn(3, 3, 32, 32)
    masks = []
    for _ in range(2):
        noise = masking_noise(9, 0, np.arange(3), model.config, "cpu")
        with torch.no_grad():
            masks.append(model(pixel_values=pixels, noise=noise).mask)
    assert torch.equal(masks[0], masks[1])


def test_image_size_not_a_multiple_of_patch_size_is_an_error(test_model_config) -> None:
    with pytest.raises(CheckpointError, match="multiple of model.patch_size"):
        mae_config(dataclasses.replace(test_model_config, image_size=30))


def test_width_not_divisible_by_heads_is_an_error(test_model_config) -> None:
    with pytest.raises(CheckpointError, match="attention heads"):
        mae_config(dataclasses.replace(test_model_config, heads=3))


def test_position_embeddings_are_the_fixed_sine_cosine_table_in_encoder_and_decoder(
    test_model_config, tmp_path
) -> None:
    """transformers 5 leaves them at zero on a fresh ViTMAE; without them the decoder paints every masked
    patch alike."""
    from leanmae.models.mae import load_mae, sincos_positions

    model = build_mae(test_model_config)
    grid = test_model_config.image_size // test_model_config.patch_size
    assert torch.equal(
        model.vit.embeddings.position_embeddings, sincos_positions(grid, test_model_config.hidden_size)
    )
    assert torch.equal(
        model.decoder.decoder_pos_embed, sincos_positions(grid, test_model_config.decoder_hidden_size)
    )
    assert model.decoder.decoder_pos_embed[0, 1:].abs().sum() > 0
    model.save_pretrained(tmp_path)
    assert torch.equal(load_mae(tmp_path).decoder.decoder_pos_embed, model.decoder.decoder_pos_embed)


def test_trivial_predictor_errors_on_a_constructed_image() -> None:
    """A 3x3 grid of one-colour patches, the centre masked: both trivial errors follow by hand."""
    from leanmae.evaluation.reconstruction import trivial_errors

    colours = torch.tensor([[0.0, 1.0, 0.0], [2.0, 5.0, 4.0], [0.0, 3.0, 0.0]])  # one channel value per patch
    target = colours.reshape(1, 9, 1, 1).expand(1, 9, 4, 3).reshape(1, 9, 12)  # 2x2-pixel patches, 3 channels
    mask = torch.zeros(1, 9)
    mask[0, 4] = 1.0  # only the centre (colour 5) is masked
    image_mean, neighbour, masked = trivial_errors(target, mask, grid=3)
    visible_mean = (0 + 1 + 0 + 2 + 4 + 0 + 3 + 0) / 8  # 1.25
    assert masked == 1.0
    assert image_mean == pytest.approx((5 - visible_mean) ** 2)
    assert neighbour == pytest.approx((5 - (1 + 2 + 4 + 3) / 4) ** 2), (
        "mean of the four visible neighbours, 2.5"
    )


def test_a_masked_patch_without_visible_neighbours_falls_back_to_the_image_mean() -> None:
    from leanmae.evaluation.reconstruction import trivial_errors

    target = torch.arange(9, dtype=torch.float32).reshape(1, 9, 1).expand(1, 9, 3).contiguous()
    mask = torch.ones(1, 9)
    mask[0, 8] = 0.0  # only the corner patch (8) is visible; patch 0 has no visible neighbour
    image_mean, neighbour, masked = trivial_errors(target, mask, grid=3)
    assert masked == 8.0
    expected = sum(
        (v - 8.0) ** 2 for v in range(8)
    )  # every masked patch predicted as 8, the only visible colour
    assert image_mean == pytest.approx(expected) and neighbour == pytest.approx(expected)


def test_a_fresh_mae_has_the_papers_initialisation(test_model_config) -> None:
    """Xavier-uniform linear layers and patch projection, N(0, 0.02) CLS and mask tokens, LayerNorm 1 / 0."""
    cfg = dataclasses.replace(
        test_model_config, hidden_size=64, decoder_hidden_size=64, heads=2, decoder_heads=2
    )
    torch.manual_seed(0)
    mae = build_mae(cfg)

    def xavier_bound(weight: torch.Tensor) -> float:
        fan_out, fan_in = weight.shape[0], weight[0].numel()
        return (6 / (fan_in + fan_out)) ** 0.5

    projection = mae.vit.embeddings.patch_embeddings.projection.weight
    for name, weight in [("patch projection", projection)] + [
        (n, m.weight) for n, m in mae.named_modules() if isinstance(m, torch.nn.Linear)
    ]:
        bound = xavier_bound(weight)
        assert weight.abs().max() <= bound + 1e-6, name
        assert weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.25), f"{name}: not Xavier-uniform"
    for token in (mae.vit.embeddings.cls_token, mae.decoder.mask_token):
        assert token.abs().sum() > 0 and token.std().item() == pytest.approx(0.02, rel=0.5)
    for norm in (m for m in mae.modules() if isinstance(m, torch.nn.LayerNorm)):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
