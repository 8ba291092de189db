"""The denoising chain as an MDP over closed-loop rollouts (BLM stage 3, DDPO/DPPO-style).

An episode simulates one scene from a logged start step. At each replan the BLM policy builds
its model inputs from the *simulated* state, and the last ``K`` DDIM steps of its joint latent
plan are the MDP's steps:

- observation: ``{"step": i, "chain": c, "x": x_{t_i} (N, T', d), "plan": the model inputs}``
  (``plan``: the :data:`~blm_gym.models.batch.PLAN_FIELDS` of an AgentBatch, B = 1 squeezed), so
  the actor needs nothing but the observation and the denoiser can be batched over scenes;
- action: the next latent ``x_{t_{i+1}}`` ``(N, T', d)`` (the Gaussian denoising policy's sample);
- reward, every step: the KL penalty to the frozen reference model, as the unbiased per-dim
  estimate ``-kl_coef * (mean (a - mu_ref)^2 / (2 sigma^2) - 1/2)`` of ``-kl_coef * KL``;
- reward at the chain's end (also ``info["task_reward"]``, with ``info["chain_end"]``): the plan is executed
  (:func:`~blm_gym.models.execution.executed_actions`) by the one simulator step
  (:func:`~blm_gym.sim.state.step`) for the replan interval, the agents the policy does not drive
  replaying the log, and the reward terms score the states the simulator produced
  (:meth:`~blm_gym.rewards.terms.RewardContext.from_state`, every road user as simulated). The
  next chain starts from that state. With ``plan_weight > 0`` the terms over the *rest* of the
  plan are added with that weight: the plan's remaining steps simulated from the executed state
  (the others replaying the log), a look-ahead that is scored and then dropped. With
  ``agent_rewards`` the chain's end also reports ``info["agent_task_reward"]`` ``(N,)``: the same
  terms scored for each plan column's agent alone (:meth:`~blm_gym.rewards.terms.RewardContext.each_agent`;
  NaN for padding and agents the policy does not drive), the per-agent credit of
  :class:`~blm_gym.rl.agent_ppo.AgentPPO`.

:class:`Loop` ``open`` is BLM's original set-up: one chain per episode from a logged state,
the whole plan (``future_steps``) executed before scoring.

The first ``num_steps - K`` DDIM steps are not MDP steps: the env runs them with ``model`` (the
model being fine-tuned, so the chain is the one the policy samples with the saved weights).
Terms that need several rollouts of a scene (the leave-one-out realism term) are added by
:class:`~blm_gym.rl.group_env.SceneGroupVectorEnv` from the ``chunk`` every chain's end reports.
"""
from __future__ import annotations

import enum
from typing import Sequence

import gymnasium as gym
import numpy as np
import torch

from blm_gym.data.scene import Scene
from blm_gym.models.batch import PLAN_FIELDS, AgentBatch, plan_inputs
from blm_gym.models.blm import BLMModel
from blm_gym.models.guidance import GuidanceConfig
from blm_gym.policies.latent_diffusion import LatentDiffusionPolicy
from blm_gym.rewards.terms import RewardContext, RewardTerm
from blm_gym.rollout.runner import controlled_mask
from blm_gym.sim.state import SimulatorState, merge_actions, step


class Loop(str, enum.Enum):
    """``closed``: a chain every replan, executed for the replan interval, the next one from the
    simulated state. ``open``: one chain from a logged state, the whole plan executed (BLM's)."""

    CLOSED = "closed"
    OPEN = "open"


def masked_dim_mean(values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(B, N, T', d)`` over the agents where ``real`` ``(B, N)``: ``(B,)``."""
    w = real.to(values.dtype)[..., None, None].expand_as(values)
    return (values * w).sum((1, 2, 3)) / w.sum((1, 2, 3)).clamp(min=1)


class DenoisingMDP(gym.Env):
    """Episodes of closed-loop (or open-loop) denoising chains; see the module docstring.

    ``problems``: ``(scene, start step)`` pairs; episode ``e`` plays problem
    ``(offset + e * stride) % len(problems)`` (lockstep copies with equal ``offset`` play the same
    scene: :class:`~blm_gym.rl.group_env.SceneGroupVectorEnv`). Every problem must leave
    ``num_chains * replan_steps`` logged steps after its start (closed loop), so all episodes
    have the same length. ``controlled``: who the policy drives (``all_vehicles``, or ``non_ego``:
    the ego replays its log, for objectives about the traffic around an AV under test).
    ``seed``: each episode's noise comes from ``default_rng([seed, episode])``;
    ``reset(options={"episode": e})`` plays episode ``e`` (so a resumed run draws what the
    uninterrupted one drew) and ``reset(seed=s)`` restarts at episode 0 under seed ``s``.
    ``agent_rewards``: also score every planned agent alone (``info["agent_task_reward"]``).
    """

    metadata = {"render_modes": []}

    def __init__(self, model: BLMModel, reference: BLMModel, problems: Sequence[tuple[Scene, int]],
                 reward: RewardTerm, *, loop: Loop | str = Loop.CLOSED, num_chains: int = 8, num_steps: int = 5,
                 tuned_denoise_steps: int = 5, eta: float = 0.0, std_floor: float = 0.3, kl_coef: float = 0.01,
                 max_agents: int = 32, replan_every_s: float = 1.0, controlled: str = "all_vehicles",
                 plan_weight: float = 0.0, agent_rewards: bool = False, seed: int = 0, offset: int = 0,
                 stride: int = 1):
        if not 1 <= tuned_denoise_steps <= num_steps:
            raise ValueError(f"DenoisingMDP: tuned_denoise_steps must be in [1, num_steps={num_steps}], "
                             f"got {tuned_denoise_steps}")
        if std_floor <= 0:
            raise ValueError(f"DenoisingMDP: std_floor must be > 0 (the last DDIM step has std 0), got {std_floor}")
        if not problems:
            raise ValueError("DenoisingMDP: got no (scene, start step) problems")
        self.loop = Loop(loop)
        if plan_weight < 0 or (plan_weight and self.loop is Loop.OPEN):
            raise ValueError(f"DenoisingMDP: plan_weight must be >= 0, and 0 in open loop (which executes the whole "
                             f"plan), got {plan_weight} with loop={self.loop.value}")
        c = model.config
        plan_s = c.future_steps * c.dt
        self.num_chains = 1 if self.loop is Loop.OPEN else int(num_chains)
        self.policy = LatentDiffusionPolicy(model, replan_every_s=plan_s if self.loop is Loop.OPEN else replan_every_s,
                                            num_steps=num_steps, eta=eta, max_agents=max_agents,
                                            guidance=GuidanceConfig(steps=0))
        self.replan_steps = self.policy.replan_steps
        need = self.num_chains * self.replan_steps if self.loop is Loop.CLOSED else 1
        short = [f"{s.scene_id}@{t}" for s, t in problems if t + need >= s.num_steps]
        if short:
            raise ValueError(f"DenoisingMDP: problems {short[:5]} leave fewer than {need} logged steps after their "
                             "start; use earlier start steps or fewer chains (num_chains)")
        self.model, self.reference = model, reference.requires_grad_(False).eval()
        self.problems, self.reward, self.controlled = list(problems), reward, controlled
        self.num_steps, self.tuned_denoise_steps = num_steps, tuned_denoise_steps
        self.eta, self.std_floor, self.kl_coef = float(eta), float(std_floor), float(kl_coef)
        self.plan_weight, self.agent_rewards = float(plan_weight), bool(agent_rewards)
        self.timesteps = model.timesteps(num_steps)
        self.seed, self.offset, self.stride = int(seed), int(offset), int(stride)
        self._episode = 0
        probe = self.policy
        probe.reset(problems[0][0], problems[0][1], controlled_mask(problems[0][0], controlled),
                    np.random.default_rng(0))
        fields = plan_inputs(probe.plan_inputs(SimulatorState.from_log(*problems[0])))
        if fields["agent_mask"].shape[0] != max_agents:
            raise ValueError("DenoisingMDP: max_agents must be an int (plans are padded to it)")
        self.latent_space = gym.spaces.Box(-np.inf, np.inf, (max_agents, c.latent_steps, c.latent_dim), np.float32)
        self.observation_space = gym.spaces.Dict({
            "step": gym.spaces.Discrete(num_steps + 1), "chain": gym.spaces.Discrete(self.num_chains + 1),
            "x": self.latent_space,
            "plan": gym.spaces.Dict({k: gym.spaces.Box(-np.inf, np.inf, v.shape, v.dtype) if v.dtype.kind == "f"
                                     else gym.spaces.Box(np.iinfo(np.int64).min if v.dtype.kind == "i" else 0,
                                                         np.iinfo(np.int64).max if v.dtype.kind == "i" else 1,
                                                         v.shape, v.dtype)
                                     for k, v in fields.items()}),
        })
        self.action_space = self.latent_space

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def num_mdp_steps(self) -> int:
        """MDP steps per episode (every episode has the same length)."""
        return self.num_chains * self.tuned_denoise_steps

    def problem_of(self, episode: int) -> int:
        return (self.offset + episode * self.stride) % len(self.problems)

    def _noise(self, shape) -> torch.Tensor:
        return torch.as_tensor(self._rng.standard_normal(shape, dtype=np.float32), device=self.device)

    def _obs(self) -> dict:
        return {"step": self._i, "chain": self._chain, "x": self._x[0].cpu().numpy(),
                "plan": {k: v.copy() for k, v in self._fields.items()}}  # fresh arrays: users may keep them

    @torch.no_grad()
    def _begin_chain(self) -> None:
        """Model inputs from the simulated state, then the chain's prefix (the non-MDP DDIM steps)."""
        self._batch = self.policy.plan_inputs(self._state)
        self._fields = plan_inputs(self._batch)
        self._ref_ctx = self.reference.encode_context(self._batch)
        x = self._noise((1,) + self.latent_space.shape)
        self._i = self.num_steps - self.tuned_denoise_steps
        if self._i > 0:
            ctx = self.model.encode_context(self._batch)
            for i in range(self._i):
                mean, std = self.model.denoise_mean_std(x, i, ctx, self.timesteps, self.eta)
                x = mean + std * self._noise(x.shape)
        self._x = x

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:  # a seeded reset restarts the episode sequence under that seed
            self.seed, self._episode = int(seed), 0
        if options and "episode" in options:  # play episode number ``options["episode"]``
            self._episode = int(options["episode"])
        self._problem = self.problem_of(self._episode)
        self._rng = np.random.default_rng([self.seed, self._episode])
        self._episode += 1
        scene, start = self.problems[self._problem]
        self._controlled = controlled_mask(scene, self.controlled)
        self._state = SimulatorState.from_log(scene, start)
        self.policy.reset(scene, start, self._controlled, self._rng)
        self._chain = 0
        self._begin_chain()
        return self._obs(), {"scene_id": scene.scene_id, "problem": self._problem}

    @torch.no_grad()
    def kl_reward(self, action: torch.Tensor) -> float:
        """``-kl_coef`` times the per-dim estimate of KL(policy || reference) at this step."""
        mean, std = self.reference.denoise_mean_std(self._x, self._i, self._ref_ctx, self.timesteps, self.eta)
        z2 = (action - mean).pow(2) / (2 * std.clamp(min=self.std_floor).pow(2))
        return -self.kl_coef * (float(masked_dim_mean(z2, self._batch.agent_mask)) - 0.5)

    def step(self, action):
        x = np.asarray(action, np.float32)
        if x.shape != self.latent_space.shape:
            raise ValueError(f"DenoisingMDP.step: action must be a latent {self.latent_space.shape}, got {x.shape}")
        a = torch.as_tensor(x, device=self.device)[None]
        reward = self.kl_reward(a)
        self._x, self._i = a, self._i + 1
        info = {"kl_reward": reward, "task_reward": 0.0, "chain_end": False, "problem": self._problem}
        if self.agent_rewards:  # every step's info has the same keys (the replay buffer stacks them)
            info["agent_task_reward"] = np.full(self.latent_space.shape[0], np.nan)
        if self._i < self.num_steps:
            return self._obs(), reward, False, False, info
        info["chunk"], info["task_reward"], agent_task = self._execute()
        if self.agent_rewards:
            info["agent_task_reward"] = agent_task
        info["chain_end"] = True
        self._chain += 1
        done = self._chain == self.num_chains
        if not done:
            self._begin_chain()
        return self._obs(), reward + info["task_reward"], done, False, info

    def _simulate_plan(self, state: SimulatorState, steps: int) -> SimulatorState:
        """``state`` after ``steps`` steps of the adopted plan (capped at the log's end)."""
        steps = min(steps, state.log.num_steps - 1 - state.current_step)
        for _ in range(steps):
            state = step(state, merge_actions(state.scene.num_agents, (self.policy.planned_action(state),
                                                                       self._controlled)))
        return state

    def _score(self, state: SimulatorState, since: int, agents: np.ndarray | None) -> tuple[float, np.ndarray]:
        """The reward terms over ``state``'s steps from ``since`` on: the scene's, and each of
        ``agents``' alone ``(M,)`` (empty without ``agents``)."""
        window = state.current_step - since + 1
        ctx = RewardContext.from_state(state, controlled=self._controlled, window=window)
        return float(self.reward(ctx)), np.zeros(0) if agents is None else self.reward(ctx.each_agent(agents))

    def _execute(self) -> tuple[dict, float, np.ndarray | None]:
        """Execute the chain's plan in the simulator; the reward terms on the states it produced
        (plus ``plan_weight`` times those over the rest of the plan, simulated ahead): the
        scene's, and with ``agent_rewards`` each plan column's ``(N,)`` (NaN where not driven)."""
        t0 = self._state.current_step
        self.policy.execute(self._x, self._batch, self._state)
        self._state = state = self._simulate_plan(self._state, self.replan_steps)
        agents = None
        if self.agent_rewards:  # the plan columns' scene agents that the policy drives
            columns = self._batch.agent_index[0].cpu().numpy()
            driven = (columns >= 0) & self._controlled[np.maximum(columns, 0)]
            agents = columns[driven]
        reward, per_agent = self._score(state, t0, agents)
        if self.plan_weight:
            ahead = self._simulate_plan(state, self.model.config.future_steps - (state.current_step - t0))
            later, later_per_agent = self._score(ahead, state.current_step, agents)
            reward, per_agent = reward + self.plan_weight * later, per_agent + self.plan_weight * later_per_agent
        sel = slice(t0, state.current_step + 1)
        chunk = {"start": t0, **{k: getattr(state.sim, k)[:, sel] for k in ("x", "y", "heading", "valid")},
                 "collision": state.collision[:, sel], "offroad": state.offroad[:, sel]}
        if agents is None:
            return chunk, reward, None
        agent_task = np.full(len(columns), np.nan)
        agent_task[driven] = per_agent
        return chunk, reward, agent_task


def batch_from_obs(plan, future_steps: int, device: torch.device | str = "cpu") -> AgentBatch:
    """The :class:`AgentBatch` ``(B, N)`` of stacked ``plan`` observations (no logged future:
    the future fields are zeros)."""
    t = {k: torch.as_tensor(np.asarray(plan[k]), device=device) for k in PLAN_FIELDS}
    b, n = t["agent_mask"].shape
    zeros = lambda *s, dtype=torch.float32: torch.zeros((b, n, future_steps) + s, dtype=dtype, device=device)  # noqa: E731
    return AgentBatch(**t, fut_actions=zeros(2), fut_states=zeros(4), fut_valid=zeros(dtype=torch.bool))
