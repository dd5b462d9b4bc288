import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from diffalign.models.conditioning import TextConditioning
from diffalign.models.tiny import SCHEDULER_CONFIG
from diffalign.sampling.inversion import inversion_grid, inverse_scheduler, invert, reached_timesteps
from diffalign.sampling.trajectory import sample_trajectory, sampling_conditioning

CONFIG = DDIMScheduler(**SCHEDULER_CONFIG).config


class ToyUNet(torch.nn.Module):
    """ε(x, t) = 0.5·x, whatever the timestep and conditioning: its inversion has a closed form to check."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None):
        return (self.scale * sample,)


def cond(batch):
    return TextConditioning(torch.zeros(batch, 77, 32))


def test_grid_and_reached_levels_are_those_of_inpo_and_smpo():
    """vectors.json 'inversion': the diffusers-0.20 grid values are our source levels, and the levels reached."""
    scheduler = inverse_scheduler(CONFIG)
    ten, five = inversion_grid(scheduler, 10), inversion_grid(scheduler, 5)
    assert ten.sources.tolist() == [-99, 1, 101, 201, 301, 401, 501, 601, 701, 801]
    assert ten.targets.tolist() == ten.unet_timesteps.tolist() == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    assert five.sources.tolist() == [-199, 1, 201, 401, 601]
    t = torch.tensor([0, 1, 2, 101, 250, 550, 850, 950, 999])
    assert reached_timesteps(ten, t).tolist() == [1, 1, 101, 101, 301, 601, 901, 901, 901]
    assert reached_timesteps(five, t).tolist() == [1, 1, 201, 201, 401, 601, 801, 801, 801]


def _reference_inversion(x0, t_target, n, renoise=False, noises=None, eta=0.1):
    """An independent float64 loop (vectors.py's `invert`) for a t-independent ε(x) = 0.5·x."""
    b = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1 - b)
    ratio = 1000 // n
    grid = np.roll(np.arange(n) * ratio + 1, 1)
    grid[0] = grid[1] - ratio
    x = x0.astype(np.float64)

    def inv(eps, t, x):
        a_cur, a_next = (ac[t] if t >= 0 else ac[0]), ac[t + ratio]
        return a_next**0.5 * (x - (1 - a_cur) ** 0.5 * eps) / a_cur**0.5 + (1 - a_next) ** 0.5 * eps

    for k, t in enumerate(grid[grid < t_target]):
        e = 0.5 * x
        if renoise:
            e = 0.5 * (e + 0.5 * inv(e, t, x))
        x = inv(e, t, x)
        if noises is not None:
            a_t, a_p = ac[t + ratio], (ac[t] if t >= 0 else ac[0])
            x = x + eta * noises[k] * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)) ** 0.5
    return x


@pytest.mark.parametrize("renoise", [False, True])
def test_toy_inversion_matches_an_independent_loop(renoise):
    x0 = torch.tensor([[[[0.8, -0.4], [0.1, 1.5]]], [[[-0.3, 0.2], [0.9, -1.1]]]])
    t = torch.tensor([250, 999])
    out = invert(ToyUNet(), CONFIG, x0, t, cond(2), num_steps=10 if not renoise else 5, renoise_steps=int(renoise))
    n = 5 if renoise else 10
    for b in range(2):
        expected = _reference_inversion(x0[b : b + 1].numpy(), int(t[b]), n, renoise=renoise)
        np.testing.assert_allclose(out.latents[b : b + 1].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert out.timesteps.tolist() == ([301, 901] if not renoise else [401, 801])


def test_toy_inversion_with_eta_noise_from_per_sample_generators():
    x0 = torch.tensor([[[[0.8, -0.4], [0.1, 1.5]]]])
    out = invert(ToyUNet(), CONFIG, x0, 250, cond(1), eta=0.1, generator=[torch.Generator().manual_seed(4)])
    g = torch.Generator().manual_seed(4)
    noises = [torch.randn((1, 1, 2, 2), generator=g).numpy() for _ in range(4)]  # steps from -99, 1, 101, 201
    expected = _reference_inversion(x0.numpy(), 250, 10, noises=noises)
    np.testing.assert_allclose(out.latents.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_a_batch_of_four_equals_four_batches_of_one(tiny_parts, record_calls):
    parts = tiny_parts("sdxl")
    x0 = torch.randn((4, 4, 8, 8), generator=torch.Generator().manual_seed(0)) * 0.1
    t = torch.tensor([0, 250, 999, 550])
    c, u, ids = sampling_conditioning(parts, ["a", "b", "c d", "e"], 32, torch.device("cpu"))
    kwargs = dict(num_steps=10, time_ids=ids, renoise_steps=1, eta=0.1)
    with record_calls(parts.unet) as calls:
        batch = invert(parts.unet, parts.noise_scheduler.config, x0, t, c,
                       generator=[torch.Generator().manual_seed(i) for i in range(4)], **kwargs)
    seen = torch.cat([t.reshape(-1) for t, _ in calls])
    assert seen.min() >= 1  # never at a negative timestep, nor at the -99 of the diffusers-0.20 grid
    assert len(calls) == 2 * 10  # (1 + renoise) calls per grid step (t = 999 runs all 10 steps)
    assert batch.timesteps.tolist() == [1, 301, 901, 601]
    for i in range(4):
        one = invert(parts.unet, parts.noise_scheduler.config, x0[i : i + 1], t[i : i + 1], c[i : i + 1],
                     generator=[torch.Generator().manual_seed(i)], **{**kwargs, "time_ids": ids[i : i + 1]})
        torch.testing.assert_close(one.latents, batch.latents[i : i + 1], rtol=1e-4, atol=1e-5)


def test_thresholding_configs_are_refused():
    with pytest.raises(ValueError, match="thresholding"):
        inverse_scheduler({**CONFIG, "thresholding": True})


def _error(parts, x0, prompts, steps, renoise=0):
    """Mean and max |x0 − DDIM-sample(DDIM-invert(x0))| over a grid of `steps` steps, up to the top level."""
    c, _, ids = sampling_conditioning(parts, prompts, 32, torch.device("cpu"))
    inverted = invert(parts.unet, parts.noise_scheduler.config, x0, 999, c, num_steps=steps, time_ids=ids,
                      renoise_steps=renoise)
    assert inverted.timesteps.tolist() == [1000 - 1000 // steps + 1] * len(x0)  # the top of the sampling grid
    back = sample_trajectory(parts, parts.unet, prompts, [0] * len(x0), steps=steps, guidance=1.0, eta=0.0,
                             initial_latents=inverted.latents, decode=False).latents[:, -1]
    err = (back - x0).abs()
    return err.mean().item(), err.max().item()


def test_inversion_then_sampling_reconstructs_an_image_latent(demo_parts):
    """The demo model (trained): x0 = the VAE latent (std ≈ 0.5) of one of its own images, inverted to t = 981
    on a 50-step grid and sampled back. Measured: mean |error| 0.026, max 0.11 (ReNoise k = 1: 0.016 and
    0.071; a 10-step grid: 0.10 and 0.35)."""
    parts, prompts = demo_parts, ["a red circle on a blue background"]
    image = sample_trajectory(parts, parts.unet, prompts, [1], steps=20, guidance=5.0, eta=0.0).images
    pixels = torch.tensor(image).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        x0 = parts.vae.encode(pixels).latent_dist.mean * parts.vae.config.scaling_factor
    mean, largest = _error(parts, x0, prompts, 50)
    assert mean < 0.04 and largest < 0.2
    assert _error(parts, x0, prompts, 50, renoise=1)[0] < 0.8 * mean  # ReNoise inverts better
    assert _error(parts, x0, prompts, 10)[0] > 2 * mean  # and the error shrinks with the step size


def test_v_prediction_inversion_converges(tiny_parts):
    """The SD2.1-v-shaped tiny UNet (random weights): the v output is converted to ε at the UNet's level."""
    parts = tiny_parts("sd21-v")
    x0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1)) * 0.5
    coarse, fine = _error(parts, x0, ["a"], 10)[0], _error(parts, x0, ["a"], 40)[0]
    assert fine < 0.5 * coarse


class TimedToyUNet(torch.nn.Module):
    """vectors.py's toy ε(x, t) = 0.5·x + 0.001·t: the timestep the UNet is called at shows in the result."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
        self.timesteps: list[int] = []

    def forward(self, sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None):
        self.timesteps.extend(torch.as_tensor(timestep).reshape(-1).tolist())
        return (self.scale * sample + 0.001 * torch.as_tensor(timestep, dtype=sample.dtype).reshape(-1, 1, 1, 1),)


VECTORS = __import__("json").loads(
    (__import__("pathlib").Path(__file__).resolve().parents[1] / "reference_vectors.json").read_text()
)["inversion"]


@pytest.mark.parametrize("case,steps,renoise", [("InPO_toy(t_s=250,n=10,eta_noise=off)", 10, 0),
                                                ("SmPO_toy(t_s=250,n=5,renoise)", 5, 1)])
def test_the_official_grid_reproduces_the_papers_inversion_vectors(case, steps, renoise):
    x0 = torch.tensor([[[[0.8, -0.4], [0.1, 1.5]]]], dtype=torch.float64)
    unet = TimedToyUNet()
    grid = inversion_grid(inverse_scheduler(CONFIG), steps, mode="official")
    out = invert(unet, CONFIG, x0, 250, cond(1).__class__(torch.zeros(1, 77, 32, dtype=torch.float64)),
                 renoise_steps=renoise, grid=grid)
    assert out.latents.flatten().tolist() == pytest.approx(VECTORS[case]["x_inv"], abs=2e-6)
    assert min(unet.timesteps) < 0  # the official code's first call is at -99 (-199 on the 5-step grid)


def test_the_consistent_grid_never_calls_the_unet_at_a_negative_timestep():
    unet = TimedToyUNet()
    x0 = torch.zeros(4, 1, 2, 2, dtype=torch.float64)
    invert(unet, CONFIG, x0, torch.tensor([0, 1, 250, 999]), TextConditioning(torch.zeros(4, 77, 32, dtype=torch.float64)),
           renoise_steps=1)
    assert unet.timesteps and min(unet.timesteps) >= 1
    with pytest.raises(ValueError, match="inversion mode 'papers'"):
        inversion_grid(inverse_scheduler(CONFIG), 10, mode="papers")
