"""Train an ego driving policy with Tianshou PPO against BLM traffic on nuScenes-mini.

The ego of ``BLM-nuScenes-v0`` is the learning agent; the pretrained BLM model drives every other
agent (``--background idm`` for rule-based traffic). Rewards come from the wrappers of
:mod:`blm_gym.rewards`: +1 per metre of progress, -10 per step in collision (which ends the
episode), -2 per step off road. The observation dict is flattened
(``gymnasium.wrappers.FlattenObservation``) for an MLP actor-critic; several envs collect in
parallel (``--subproc`` runs each in its own process: use it when you have spare cores).

Each epoch collects ``--steps-per-epoch`` env steps, runs PPO updates and prints the mean return
of the episodes that ended in it; training stops after ``--minutes`` of wall time. Episodes are
``--horizon`` seconds long and start at random training scenes (the val scenes are held out).

Run: ``python examples/train_ego_ppo.py --minutes 3``  (``--smoke``: a few seconds, for tests)
"""
from __future__ import annotations

import argparse
import os
import logging
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium.wrappers import FlattenObservation, TransformObservation

import blm_gym  # noqa: F401  (registers the env ids)

from blm_gym.atomic_files import atomic_path
from blm_gym.rewards import CollisionPenalty, OffroadPenalty, ProgressReward
from tianshou.algorithm import PPO
from tianshou.algorithm.modelfree.reinforce import ProbabilisticActorPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Collector, VectorReplayBuffer
from tianshou.env import DummyVectorEnv, SubprocVectorEnv
from tianshou.utils.net.common import Net
from tianshou.utils.net.continuous import ContinuousActorProbabilistic, ContinuousCritic
from tianshou.utils.torch_utils import policy_within_training_step, torch_train_mode

VAL_SCENES = ("scene-0103", "scene-0916")  # official nuScenes v1.0-mini val split: not trained on
OBS_SCALE = 0.1  # observations are metres and m/s: bring them near unit scale for the MLP


class ScalarInfo(gym.Wrapper):
    """Keeps the scalar ``info`` entries: Tianshou stacks infos across envs into arrays, and the
    per-agent ones (``collisions``, ``controlled``, ...) differ in length between scenes."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, _scalars(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, _scalars(info)


def _scalars(info: dict) -> dict:
    return {k: v for k, v in info.items() if np.ndim(v) == 0}


def make_env(data_dir: Path, background: str, horizon_s: float) -> gym.Env:
    from blm_gym.data.scenarionet import ScenarioNetSource

    train_ids = [s for s in ScenarioNetSource(data_dir).scene_ids if s not in VAL_SCENES]
    env = gym.make("BLM-nuScenes-v0", data_dir=data_dir, scene_ids=train_ids, background=background,
                   horizon_s=horizon_s)
    env = OffroadPenalty(CollisionPenalty(ProgressReward(env), weight=10.0), weight=2.0)
    env = FlattenObservation(ScalarInfo(env))
    return TransformObservation(env, lambda o: o * OBS_SCALE, env.observation_space)


def build_ppo(obs_dim: int, action_space: gym.spaces.Box, lr: float) -> PPO:
    hidden = (64, 64)
    def mlp():
        return Net(state_shape=obs_dim, hidden_sizes=hidden, activation=torch.nn.Tanh)

    actor = ContinuousActorProbabilistic(preprocess_net=mlp(), action_shape=action_space.shape, unbounded=True)
    critic = ContinuousCritic(preprocess_net=mlp())

    def gaussian(loc_scale):
        loc, scale = loc_scale
        return torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)

    # The actor acts in [-1, 1]; the policy scales to (acceleration m/s^2, yaw rate rad/s) bounds.
    policy = ProbabilisticActorPolicy(actor=actor, dist_fn=gaussian, action_space=action_space,
                                      action_scaling=True, action_bound_method="clip")
    return PPO(policy=policy, critic=critic, optim=AdamOptimizerFactory(lr=lr), eps_clip=0.2, ent_coef=0.0,
               gae_lambda=0.95, gamma=0.99, max_grad_norm=0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("BLM_GYM_DATA", "../shared/data")) / "nuscenes-mini",
                   help="a ScenarioNet nuScenes folder")
    p.add_argument("--background", default="blm", help="policy driving the other agents: blm | idm | log")
    p.add_argument("--minutes", type=float, default=3.0, help="wall-time budget")
    p.add_argument("--envs", type=int, default=4, help="parallel envs")
    p.add_argument("--subproc", action="store_true", help="one process per env (SubprocVectorEnv)")
    p.add_argument("--steps-per-epoch", type=int, default=1000)
    p.add_argument("--horizon", type=float, default=5.0, help="episode length, s")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/ego_ppo.pt"), help="where to save the actor-critic")
    p.add_argument("--smoke", action="store_true", help="2 tiny epochs (seconds), for tests")
    args = p.parse_args()
    if args.smoke:
        args.envs, args.steps_per_epoch, args.horizon = 2, 100, 2.0
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    logging.getLogger("tianshou").setLevel(logging.WARNING)
    # Tianshou warns about unbounded actors with action scaling, its own recommended setup.
    warnings.filterwarnings("ignore", message="action_scaling and action_bound_method")

    vector_env = SubprocVectorEnv if args.subproc else DummyVectorEnv
    envs = vector_env([lambda: make_env(args.data_dir, args.background, args.horizon)] * args.envs)
    envs.seed([args.seed + i for i in range(args.envs)])
    obs_dim = gym.spaces.flatdim(envs.observation_space[0])  # tianshou reports the unwrapped (Dict) space
    algo = build_ppo(obs_dim, envs.action_space[0], args.lr)
    buffer = VectorReplayBuffer(args.steps_per_epoch, args.envs)
    collector = Collector(algo, envs, buffer)
    collector.reset()

    print(f"PPO ego vs {args.background} traffic: {args.envs} envs, {args.steps_per_epoch} steps/epoch, "
          f"{args.minutes} min budget")
    t0, epoch = time.perf_counter(), 0
    while epoch < 2 if args.smoke else time.perf_counter() - t0 < 60 * args.minutes:
        with policy_within_training_step(algo.policy), torch_train_mode(algo, False):
            collected = collector.collect(n_step=args.steps_per_epoch)
        with policy_within_training_step(algo.policy):
            algo.update(buffer, batch_size=64, repeat=4)
        buffer.reset()  # on-policy: every epoch learns from fresh data only
        epoch += 1
        returns = collected.returns_stat
        ended = collected.n_collected_episodes
        mean = f"{returns.mean:7.2f} over {ended:3d} episodes" if ended else "n/a (no episode ended)"
        print(f"epoch {epoch:3d}  {time.perf_counter() - t0:6.1f} s  mean return {mean}", flush=True)
    envs.close()
    with atomic_path(args.out) as tmp:
        torch.save(algo.state_dict(), tmp)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
