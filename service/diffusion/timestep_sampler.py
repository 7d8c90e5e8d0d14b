"""Which t each training example gets: uniform, or importance sampling for L_vlb (paper section 3.3).

Importance sampling draws t with p_t proportional to sqrt(E[L_t^2]) estimated from the last 10 losses
of every t, mixed with a small uniform component, and weights each loss by 1/(T p_t) so the objective
stays unbiased. Until every t has 10 losses it samples uniformly.
"""

from __future__ import annotations

import numpy as np
import torch


class UniformSampler:
    def __init__(self, num_timesteps: int) -> None:
        self.num_timesteps = num_timesteps

    def probabilities(self) -> np.ndarray:
        return np.full(self.num_timesteps, 1.0 / self.num_timesteps)

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t [B] int64, importance weights [B] float32)."""
        p = torch.from_numpy(self.probabilities())
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t, weights.float()

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling learns nothing from losses."""


class LossSecondMomentSampler(UniformSampler):
    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(num_timesteps)
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.loss_history = np.zeros((num_timesteps, history_per_term), dtype=np.float64)
        self.loss_counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history_per_term).all())

    def probabilities(self) -> np.ndarray:
        if not self.warmed_up():
            return super().probabilities()
        weights = np.sqrt(np.mean(self.loss_history**2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        return weights

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example L_t values (before importance weighting); keep the last 10 per t."""
        for ti, loss in zip(t.tolist(), losses.detach().double().tolist(), strict=True):
            if self.loss_counts[ti] == self.history_per_term:
                self.loss_history[ti, :-1] = self.loss_history[ti, 1:]
                self.loss_history[ti, -1] = loss
            else:
                self.loss_history[ti, self.loss_counts[ti]] = loss
                self.loss_counts[ti] += 1

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"loss_history": self.loss_history.copy(), "loss_counts": self.loss_counts.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.loss_history = np.asarray(state["loss_history"], dtype=np.float64).copy()
        self.loss_counts = np.asarray(state["loss_counts"], dtype=np.int64).copy()
