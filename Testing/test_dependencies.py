"""The third-party pieces the capabilities build on exist in the required versions and run together."""

from __future__ import annotations

import torch


def test_monai_semantic_diffusion_unet_and_schedulers_run_with_einops():
    """``monai>=1.4`` has the SPADE diffusion UNet and the DDPM/DDIM schedulers; building one needs ``einops``."""
    from monai.networks.nets import DiffusionModelUNet, SPADEDiffusionModelUNet
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    torch.manual_seed(0)
    network = SPADEDiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        label_nc=4,
        channels=(8, 8),
        attention_levels=(False, True),
        num_res_blocks=1,
        num_head_channels=8,
        norm_num_groups=8,
    ).eval()
    noisy = torch.randn(2, 1, 16, 16)
    labels = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 16, 16)), 4).permute(0, 3, 1, 2).float()
    scheduler = DDPMScheduler(num_train_timesteps=10)
    timesteps = torch.tensor([0, 9])
    with torch.no_grad():
        noise = network(noisy, timesteps, seg=labels)
    assert noise.shape == noisy.shape and torch.isfinite(noise).all()
    stepped, _ = scheduler.step(noise[:1], 9, noisy[:1])
    assert stepped.shape == (1, 1, 16, 16)
    ddim = DDIMScheduler(num_train_timesteps=10)
    ddim.set_timesteps(5)
    assert len(ddim.timesteps) == 5 and ddim.timesteps[-1] == 0
    plain = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(8, 8),
        attention_levels=(False, False),
        num_res_blocks=1,
        norm_num_groups=8,
    ).eval()
    with torch.no_grad():
        assert plain(noisy, timesteps).shape == noisy.shape
