"""PPO with per-agent credit over the denoising MDP (``FinetuneConfig.credit = "agent"``).

A scene-level reward credits each vehicle's latent with 1/N of its own collision and with every
other vehicle's luck, so a few scenes' gradient is mostly noise. Here each planned agent is
scored alone (:class:`~blm_gym.rl.denoising_mdp.DenoisingMDP` with ``agent_rewards``:
``info["agent_task_reward"]`` ``(N,)`` at a chain's end, one per plan column) and the latent of
agent ``n`` at MDP step ``t`` of chain ``c`` gets the advantage

    R[t, n] = agent_task_reward[c, n] + realism_weight * realism[c] + KL rewards from t to the chain's end
    A[t, n] = R[t, n] - mean of R[t, .] of the same scene agent in the other copies of its scene

The K lockstep copies of each scene (:class:`~blm_gym.rl.group_env.SceneGroupVectorEnv`) are the
baseline, as the per-prompt baseline of DDPO and the group of GRPO: no critic. A chain's reward
credits that chain only; the rest of the plan enters through the look-ahead term
(``plan_weight``). The clipped surrogate takes each agent's own probability ratio (of its
per-dimension mean log-prob, :meth:`~blm_gym.rl.ppo.LatentGaussian.agent_log_prob`) and
averages over the scored (step, agent) entries; advantages are divided by their standard
deviation over the iteration.
"""
from __future__ import annotations

import numpy as np
import torch
from tianshou.algorithm.algorithm_base import OnPolicyAlgorithm
from tianshou.algorithm.modelfree.reinforce import LossSequenceTrainingStats, ProbabilisticActorPolicy
from tianshou.algorithm.optim import OptimizerFactory
from tianshou.data import ReplayBuffer, SequenceSummaryStats, to_torch


def leave_one_out_advantages(returns: np.ndarray, agent_id: np.ndarray, scored: np.ndarray,
                             group_size: int) -> np.ndarray:
    """``returns - baseline`` ``(E, T, N)``: E envs in groups of ``group_size`` consecutive copies
    of one scene, T steps, N plan columns; the baseline of an entry is the mean return of the
    same scene agent (``agent_id``) at the same step in the *other* copies of its group that score
    it. NaN where not ``scored`` or no other copy scores that agent."""
    e, t, n = returns.shape
    if e % group_size:
        raise ValueError(f"leave_one_out_advantages: {e} envs do not split into groups of {group_size}")
    adv = np.full(returns.shape, np.nan)
    step = np.broadcast_to(np.arange(t)[None, :, None], (group_size, t, n))
    for g in range(e // group_size):
        rows = slice(g * group_size, (g + 1) * group_size)
        ok = scored[rows]
        values = returns[rows][ok]
        _, key = np.unique(np.stack([step[ok], agent_id[rows][ok]]), axis=1, return_inverse=True)
        key = key.reshape(-1)
        total, count = np.bincount(key, values), np.bincount(key)
        others = count[key] - 1
        out = np.full(ok.shape, np.nan)
        out[ok] = np.where(others > 0, values - (total[key] - values) / np.maximum(others, 1), np.nan)
        adv[rows] = out
    return adv


class AgentPPO(OnPolicyAlgorithm[ProbabilisticActorPolicy]):
    """Clipped-surrogate PPO with per-agent leave-one-out advantages; see the module docstring.

    ``group_size``: lockstep copies per scene (env ``j`` is in group ``j // group_size``);
    ``realism_weight``: the leave-one-out realism term's weight (as the envs add it to the reward).
    """

    def __init__(self, *, policy: ProbabilisticActorPolicy, optim: OptimizerFactory, group_size: int,
                 realism_weight: float, eps_clip: float, max_grad_norm: float | None, max_batchsize: int = 256):
        super().__init__(policy=policy)
        self.group_size, self.realism_weight = int(group_size), float(realism_weight)
        self.eps_clip, self.max_batchsize = float(eps_clip), int(max_batchsize)
        self.optim = self._create_optimizer(self.policy, optim, max_grad_norm=max_grad_norm)

    def _preprocess_batch(self, batch, buffer: ReplayBuffer, indices: np.ndarray):
        info = batch.info
        env = np.asarray(info.env_id)
        order = np.lexsort((indices, env))  # each env's transitions in the order they happened
        envs = len(np.unique(env))
        if len(env) % envs or np.any(np.bincount(env) != len(env) // envs):
            raise RuntimeError("AgentPPO: every env must have played one whole episode per iteration")
        shape = (envs, len(env) // envs)
        end = np.asarray(info.chain_end, bool)[order].reshape(shape)
        if not end[:, -1].all() or (end.any(0) != end.all(0)).any():
            raise RuntimeError("AgentPPO: the envs' chains must end in lockstep, the last step a chain's end")
        kl = np.asarray(info.kl_reward, float)[order].reshape(shape)
        realism = self.realism_weight * np.asarray(info.realism, float)[order].reshape(shape)
        agent_task = np.asarray(info.agent_task_reward, float)[order].reshape(shape + (-1,))
        agent_id = np.asarray(batch.obs.plan["agent_index"])[order].reshape(agent_task.shape)
        # per-agent return: the chain's end rewards (own task, the scene's realism) plus the KL rewards to go
        returns, scored = np.zeros(agent_task.shape), np.zeros(agent_task.shape, bool)
        for t in reversed(range(shape[1])):
            if end[0, t]:
                chain_value, chain_scored = agent_task[:, t] + realism[:, t, None], np.isfinite(agent_task[:, t])
                kl_to_go = np.zeros(shape[0])
            kl_to_go = kl_to_go + kl[:, t]
            returns[:, t] = np.where(chain_scored, chain_value, 0.0) + kl_to_go[:, None]
            scored[:, t] = chain_scored & (agent_id[:, t] >= 0)
        adv = leave_one_out_advantages(returns, agent_id, scored, self.group_size)
        ok = np.isfinite(adv)
        scale = adv[ok].std() + 1e-8 if ok.any() else 1.0
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        batch.adv = torch.as_tensor(np.where(ok, adv, 0.0).reshape(len(order), -1)[back] / scale, dtype=torch.float32)
        batch.scored = torch.as_tensor(ok.reshape(len(order), -1)[back])
        batch.act = to_torch(batch.act, torch.float32)
        with torch.no_grad():
            batch.logp_old = torch.cat([self.policy(mb).dist.agent_log_prob(mb.act)
                                        for mb in batch.split(self.max_batchsize, shuffle=False, merge_last=True)])
        return batch

    def _update_with_batch(self, batch, batch_size: int | None, repeat: int) -> LossSequenceTrainingStats:
        losses = []
        for _ in range(repeat):
            for mb in batch.split(batch_size or -1, merge_last=True):
                ratio = (self.policy(mb).dist.agent_log_prob(mb.act) - mb.logp_old).exp()
                surrogate = torch.min(ratio * mb.adv, ratio.clamp(1 - self.eps_clip, 1 + self.eps_clip) * mb.adv)
                weight = mb.scored.float()
                loss = -(surrogate * weight).sum() / weight.sum().clamp(min=1)
                self.optim.step(loss)
                losses.append(loss.item())
        return LossSequenceTrainingStats(loss=SequenceSummaryStats.from_sequence(losses))
