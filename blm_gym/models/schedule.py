"""DDPM cosine noise schedule and DDIM steps (Nichol & Dhariwal 2021; Song et al. 2021).

Index ``t`` in ``0 .. T-1`` is a diffusion step with cumulative signal ``alpha_bar[t]``
(``x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps``). The denoiser predicts ``x_0``
(x0-prediction: steadier than epsilon-prediction with few DDIM steps, and the decoded plan is
what the reward sees); epsilon follows from it. ``t = -1`` stands for the clean end of a chain
(``alpha_bar = 1``), so the last DDIM step is deterministic (std 0) whatever ``eta`` is.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def cosine_alpha_bar(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """``alpha_bar[t]`` for ``t = 0 .. T-1`` of the cosine schedule, betas clipped at ``max_beta``."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f((t + 1) / num_steps) / f(t / num_steps), max_beta) for t in range(num_steps)],
                         dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def ddim_timesteps(num_steps: int, train_steps: int) -> torch.Tensor:
    """``num_steps`` descending step indices, "trailing" spacing: starts at ``T - 1`` (pure noise).

    E.g. 5 of 100 -> ``[99, 79, 59, 39, 19]``; the chain then ends at the clean ``t = -1``.
    """
    if not 1 <= num_steps <= train_steps:
        raise ValueError(f"ddim_timesteps: num_steps must be in [1, {train_steps}], got {num_steps}")
    return (torch.round(train_steps - torch.arange(num_steps) * (train_steps / num_steps)) - 1).long()


class DiffusionSchedule(nn.Module):
    """Holds ``alpha_bar`` as a buffer (moves with the model between devices)."""

    def __init__(self, train_steps: int = 100):
        super().__init__()
        self.train_steps = train_steps
        self.register_buffer("alpha_bar", cosine_alpha_bar(train_steps), persistent=False)

    def _ab(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``alpha_bar[t]`` (1 where ``t == -1``), shaped to broadcast over ``like``'s batch dim."""
        t = torch.as_tensor(t, device=self.alpha_bar.device)
        ab = torch.where(t >= 0, self.alpha_bar[t.clamp(min=0)], torch.ones((), device=t.device))
        return ab.reshape(ab.shape + (1,) * (like.dim() - ab.dim()))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noised ``x_t`` for per-item steps ``t`` ``(B,)``."""
        ab = self._ab(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def ddim_mean_std(self, x_t: torch.Tensor, x0_hat: torch.Tensor, t, t_prev, eta: float):
        """Gaussian of ``x_{t_prev}`` given ``x_t`` and the predicted ``x_0`` (DDIM, Song et al. eq. 12).

        ``std = eta * sqrt((1 - ab_prev) / (1 - ab)) * sqrt(1 - ab / ab_prev)``; returns
        ``(mean, std)`` with ``std`` expanded to ``mean``'s shape.
        """
        ab, ab_prev = self._ab(t, x_t), self._ab(t_prev, x_t)
        eps = (x_t - ab.sqrt() * x0_hat) / (1 - ab).clamp(min=1e-8).sqrt()
        var = eta ** 2 * (1 - ab_prev) / (1 - ab).clamp(min=1e-8) * (1 - ab / ab_prev)
        var = var.clamp(min=0.0)
        mean = ab_prev.sqrt() * x0_hat + (1 - ab_prev - var).clamp(min=0.0).sqrt() * eps
        return mean, var.sqrt().expand_as(mean)
