"""The denoising chain as an MDP (BLM stage 3, DDPO/DPPO-style).

One episode is the last ``K`` DDIM steps of one joint latent plan for one bank entry (a scene
planned from one log step, :class:`SceneBank`):

- state: ``(scene index, DDIM step index i, x_{t_i})``, observed as a dict
  ``{"scene": int, "step": int, "x": (N, T', d) float32}``;
- action: the next latent ``x_{t_{i+1}}`` ``(N, T', d)`` (what the Gaussian denoising policy samples);
- reward: 0 until the chain ends, then the reward terms on the decoded plan: the latents are
  decoded to world states (current state + ``F`` future states of every planned agent) and
  scored with a :class:`~blm_gym.rewards.RewardTerm` (e.g. ``make_reward("collision=1,offroad=1")``),
  in numpy, so no gradient can flow through it.

The first ``num_steps - K`` DDIM steps are not MDP steps: ``reset`` runs them with ``model``
without gradient (pass the model being fine-tuned, so the MDP's chain is the one
``BLMModel.sample`` draws with the saved weights). Several samples per scene come from several
copies of this env stepping in lockstep: the ``k``-th episode of every copy plans scene
``k % num_scenes`` (or ``options={"scene": i}``), so advantages can be normalised per scene.
"""
from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import numpy as np
import torch

from blm_gym.data.scene import AgentType, Scene
from blm_gym.models.batch import AgentBatch, collate, make_agent_batch
from blm_gym.models.blm import BLMModel
from blm_gym.models.denoiser import SceneContext
from blm_gym.policies.latent_diffusion import standstill
from blm_gym.rewards.terms import RewardContext, RewardTerm


class SceneBank:
    """The fine-tuning planning problems, their model inputs (B = 1 each, padded to ``max_agents``)
    and the frozen ``reference`` model's scene contexts (computed once, no gradient).

    Entry ``k`` plans scene ``scenes[k]`` from log step ``steps[k]``: every scene is planned from
    every step of ``step`` (an int or several) that it has, so closed-loop-like states along the
    log are covered (the closed-loop policy replans every second).
    """

    def __init__(self, scenes: Sequence[Scene], reference: BLMModel, *, step: int | Sequence[int],
                 max_agents: int = 32, device: str | torch.device = "cpu"):
        if not scenes:
            raise ValueError("SceneBank: got no scenes")
        c = reference.config
        wanted = [int(step)] if np.ndim(step) == 0 else [int(k) for k in step]
        short = [s.scene_id for s in scenes if s.num_steps <= min(wanted)]
        if short:
            raise ValueError(f"SceneBank: scenes {short} have none of the steps {wanted}; lower the planning steps "
                             "(start_steps)")
        pairs = [(s, k) for k in wanted for s in scenes if k < s.num_steps]  # step-major: consecutive entries
        # (the scenes of one PPO iteration) are different scenes
        self.scenes = [s for s, _ in pairs]
        self.steps = [k for _, k in pairs]
        self.batches = [make_agent_batch(s, k, max_agents=max_agents, history_steps=c.history_steps,
                                         future_steps=c.future_steps).to(device) for s, k in pairs]
        with torch.no_grad():
            self.contexts = [reference.encode_context(b) for b in self.batches]

    def __len__(self) -> int:
        return len(self.scenes)

    def batch(self, index) -> AgentBatch:
        """Model inputs of scenes ``index`` (ints), collated."""
        return collate([self.batches[int(i)] for i in index])

    def reference_context(self, index) -> SceneContext:
        """The frozen reference model's contexts of scenes ``index`` (ints), concatenated."""
        parts = [self.contexts[int(i)] for i in index]
        return SceneContext(*(torch.cat([getattr(p, f) for p in parts]) for f in
                              ("agent_emb", "map_tokens", "map_mask", "agent_mask", "vae_cond")))

    def agent_mask(self, index) -> torch.Tensor:
        """``(B, N)`` bool: real (not padded) agents of scenes ``index``."""
        return torch.cat([self.batches[int(i)].agent_mask for i in index])


def decoded_reward_context(bank: SceneBank, scene: int, world_states: np.ndarray,
                           ego_replays_log: bool = False) -> RewardContext:
    """Reward context of decoded plans ``(..., N, F, 4)`` (x, y, heading, speed) of scene ``scene``.

    All planned (real, not padded) agents are in the context and the vehicles among them are
    scored (the closed-loop policy drives vehicles); their current state is prepended, so
    ``T = F + 1``, step-difference terms (progress, comfort) see the plan's start and
    ``offroad(from_road=1)`` knows who starts on the road. ``ego_replays_log``: the ego follows
    its logged track instead of its decoded plan (for objectives about the traffic around an AV
    under test, such as ``safety_critical``).
    """
    b = bank.batches[scene]
    rows = (b.agent_mask[0] & (b.agent_index[0] >= 0)).cpu().numpy()
    now = np.broadcast_to(b.state_world[0].cpu().numpy()[rows][:, None, :],
                          world_states.shape[:-3] + (int(rows.sum()), 1, 4))
    states = np.concatenate([now, world_states[..., rows, :, :]], axis=-2)
    idx = b.agent_index[0].cpu().numpy()[rows]
    sc = bank.scenes[scene]
    if ego_replays_log and sc.ego_index in idx:  # the AV under test is not the traffic model's to move
        t0, t = bank.steps[scene], states.shape[-2]
        log = sc.traj
        end = min(t0 + t, log.num_steps)
        logged = np.stack([a[sc.ego_index, t0:end] for a in (log.x, log.y, log.heading, log.speed)], -1)
        logged = np.concatenate([logged, np.repeat(logged[-1:], t - len(logged), axis=0)])  # hold past the log end
        states = states.copy()
        states[..., int(np.flatnonzero(idx == sc.ego_index)[0]), :, :] = logged
    return RewardContext.from_scene(sc, *np.moveaxis(states, -1, 0), valid=np.ones(states.shape[:-1], bool),
                                    controlled=sc.agent_type[idx] == AgentType.VEHICLE, agent_index=idx)


class DenoisingMDP(gym.Env):
    """One episode = the last ``tuned_denoise_steps`` DDIM steps of one plan; see the module docstring.

    ``model`` runs the frozen prefix steps and decodes the final latents (no gradient);
    ``reward`` scores the decoded plan as the closed-loop policy would execute it (agents under
    its standstill hold stay at their current pose; ``standstill_speed=0`` scores the raw plan); ``eta`` is the DDIM stochasticity of the prefix steps.
    ``seed`` seeds the env's noise once (resets without a seed continue the stream; a seeded
    reset also restarts the scene cycle at ``first_episode``, which offsets it for resumed runs).
    """

    metadata = {"render_modes": []}

    def __init__(self, model: BLMModel, bank: SceneBank, reward: RewardTerm, *, num_steps: int = 10,
                 tuned_denoise_steps: int = 2, eta: float = 1.0, seed: int | None = None, first_episode: int = 0,
                 standstill_speed: float = 0.5, standstill_hold_s: float = 2.0, ego_replays_log: bool = False):
        if not 1 <= tuned_denoise_steps <= num_steps:
            raise ValueError(f"DenoisingMDP: tuned_denoise_steps must be in [1, num_steps={num_steps}], "
                             f"got {tuned_denoise_steps}")
        self.model, self.bank, self.reward = model, bank, reward
        self.num_steps, self.tuned_denoise_steps, self.eta = num_steps, tuned_denoise_steps, float(eta)
        # the closed-loop policy's standstill hold (LatentDiffusionPolicy), applied to scored plans
        self.standstill_speed = standstill_speed
        self.ego_replays_log = ego_replays_log
        self.hold_steps = max(int(round(standstill_hold_s / model.config.dt)), 1)
        self.timesteps = model.timesteps(num_steps)
        c = model.config
        shape = (bank.batches[0].num_agents, c.latent_steps, c.latent_dim)
        self.latent_space = gym.spaces.Box(-np.inf, np.inf, shape, np.float32)
        self.observation_space = gym.spaces.Dict({
            "scene": gym.spaces.Discrete(len(bank)), "step": gym.spaces.Discrete(num_steps + 1),
            "x": self.latent_space,
        })
        self.action_space = self.latent_space
        self._first_episode = self._episode = first_episode
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)

    @property
    def device(self) -> torch.device:
        return self.bank.batches[0].hist.device

    def _noise(self, shape) -> torch.Tensor:
        return torch.as_tensor(self.np_random.standard_normal(shape, dtype=np.float32), device=self.device)

    def _obs(self) -> dict:
        return {"scene": self._scene, "step": self._i, "x": self._x[0].cpu().numpy()}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:  # a seeded reset restarts the scene cycle too
            self._episode = self._first_episode
        scene = (options or {}).get("scene")
        self._scene = int(scene) if scene is not None else self._episode % len(self.bank)
        if not 0 <= self._scene < len(self.bank):
            raise ValueError(f"DenoisingMDP.reset: scene {self._scene} outside [0, {len(self.bank)})")
        self._episode += 1
        x = self._noise((1,) + self.latent_space.shape)
        self._i = self.num_steps - self.tuned_denoise_steps
        if self._i > 0:
            with torch.no_grad():
                ctx = self.model.encode_context(self.bank.batches[self._scene])
                for i in range(self._i):
                    mean, std = self.model.denoise_mean_std(x, i, ctx, self.timesteps, self.eta)
                    x = mean + std * self._noise(x.shape)
        self._x = x
        return self._obs(), {"scene_id": self.bank.scenes[self._scene].scene_id}

    def step(self, action):
        x = np.asarray(action, np.float32)
        if x.shape != self.latent_space.shape:
            raise ValueError(f"DenoisingMDP.step: action must be a latent {self.latent_space.shape}, got {x.shape}")
        self._x = torch.as_tensor(x, device=self.device)[None]
        self._i += 1
        if self._i < self.num_steps:
            return self._obs(), 0.0, False, False, {}
        batch = self.bank.batches[self._scene]
        with torch.no_grad():
            _, world = self.model.decode(self._x, batch)
            if self.standstill_speed > 0:  # score what the closed-loop policy executes: held agents stay put
                now = batch.state_world[:, :, None, :] * torch.tensor([1.0, 1.0, 1.0, 0.0])
                hold = standstill(batch.state_world[..., 3], world[..., 3], self.standstill_speed, self.hold_steps)
                world = torch.where(hold[..., None, None], now.expand_as(world), world)
        ctx = decoded_reward_context(self.bank, self._scene, world[0].cpu().numpy().astype(np.float64),
                                     self.ego_replays_log)
        reward = float(self.reward(ctx))
        values = getattr(self.reward, "values", None)
        info = {"reward_terms": {k: float(v) for k, v in values(ctx).items()}} if values else {}
        return self._obs(), reward, True, False, info
