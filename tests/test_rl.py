"""The closed-loop denoising MDP, its group terms and PPO fine-tuning, on a tiny BLM model and hand-made scenes."""
from __future__ import annotations

import csv
import dataclasses
import math

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from tianshou.data import Batch

from blm_gym.data.scene import AgentType, Trajectories
from blm_gym.models.blm import BLMConfig, BLMModel
from blm_gym.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from blm_gym.rewards import RewardContext, make_reward
from blm_gym.rl import DenoisingMDP, Loop, SceneGroupVectorEnv, chunk_realism
from blm_gym.rl import group_env
from blm_gym.sim.state import merge_actions, step, trajectory_checks
from blm_gym.rl import agent_ppo, ppo
from blm_gym.rl.ppo import DenoisingActor, FinetuneConfig, finetune, latent_gaussian, validation_split
from test_rewards import make_scene

torch.set_num_threads(1)
TINY = BLMConfig(history_steps=5, future_steps=8, latent_dim=4, vae_channels=16, d_model=16, num_layers=1,
                 num_heads=2, train_steps=20, sample_steps=4)


def scene(steps: int = 40):
    """Two moving cars and a pedestrian on a straight road; 5 agent slots, so two are padding."""
    t = np.arange(steps, dtype=np.float32)
    return make_scene(np.stack([10 + t, 30 + 0.8 * t, 50 + 0.1 * t]), np.stack([0 * t, 3 + 0 * t, -8 + 0 * t]),
                      speed=np.stack([np.full(steps, 10.0), np.full(steps, 8.0), np.full(steps, 1.0)]),
                      types=[AgentType.VEHICLE, AgentType.VEHICLE, AgentType.PEDESTRIAN])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BLMModel(TINY).eval()


def mdp(model, reward="collision=1,progress=0.1", **kw) -> DenoisingMDP:
    base = dict(num_chains=2, num_steps=4, tuned_denoise_steps=2, max_agents=5, replan_every_s=0.5, eta=1.0)
    return DenoisingMDP(model, model, [(scene(), 5)], make_reward(reward), **{**base, **kw})


def run_episode(env: DenoisingMDP):
    obs, _ = env.reset()
    steps, done = [], False
    while not done:
        obs, r, done, _, info = env.step(obs["x"])
        steps.append((r, info, env._state))
    return steps


def test_closed_loop_chain_reward_is_the_terms_on_the_simulated_states(model):
    env = mdp(model, reward="progress=1,offroad=1")
    steps = run_episode(env)
    assert len(steps) == env.num_mdp_steps == 4
    ends = [(r, info, state) for r, info, state in steps if info["chain_end"]]
    assert len(ends) == 2  # one per chain, after its 2 tuned DDIM steps
    term = make_reward("progress=1,offroad=1")
    for k, (r, info, state) in enumerate(ends):
        assert state.current_step == 5 + 5 * (k + 1)  # each chain executed the replan interval (0.5 s)
        ctx = RewardContext.from_state(state, controlled=state.scene.is_vehicle, window=6)
        assert info["task_reward"] == pytest.approx(float(term(ctx)))
        assert r == pytest.approx(info["task_reward"] + info["kl_reward"])
    # what was scored is the simulator's state: the pedestrian (not the policy's) replayed its log
    final = ends[-1][2]
    assert final.sim.x[2, 15] == pytest.approx(final.log.x[2, 15])
    # the second chain planned from the simulated state, not the log
    assert not np.allclose(final.sim.x[:2, 10], final.log.x[:2, 10])
    check_env(env, skip_render_check=True)


def test_plan_weight_adds_the_terms_over_the_rest_of_the_plan_without_executing_it(model):
    spec = "progress=1,offroad=1"
    executed, ahead = mdp(model, reward=spec), mdp(model, reward=spec, plan_weight=0.5)
    term = make_reward(spec)
    obs, _ = executed.reset(seed=3)
    ahead.reset(seed=3)
    for _ in range(executed.num_mdp_steps):
        action = obs["x"]
        obs, _, _, _, info = executed.step(action)
        _, _, _, _, info_ahead = ahead.step(action)
        np.testing.assert_array_equal(ahead._state.sim.x, executed._state.sim.x)  # the look-ahead is not kept
        if not info["chain_end"]:
            continue
        state = ahead._state  # the plan's remaining 8 - 5 steps, by hand, from the executed state
        for _ in range(TINY.future_steps - ahead.replan_steps):
            state = step(state, merge_actions(state.scene.num_agents, (ahead.policy.planned_action(state),
                                                                       state.scene.is_vehicle)))
        rest = float(term(RewardContext.from_state(state, controlled=state.scene.is_vehicle, window=4)))
        assert info_ahead["task_reward"] == pytest.approx(info["task_reward"] + 0.5 * rest)
    with pytest.raises(ValueError, match="plan_weight"):
        mdp(model, loop=Loop.OPEN, plan_weight=1.0)


def test_open_loop_episode_is_one_chain_executing_the_whole_plan(model):
    env = mdp(model, loop=Loop.OPEN)
    steps = run_episode(env)
    assert len(steps) == 2 and steps[-1][2].current_step == 5 + TINY.future_steps


def test_non_ego_control_leaves_the_ego_on_its_log(model):
    env = mdp(model, controlled="non_ego")
    final = run_episode(env)[-1][2]
    ego = final.scene.ego_index
    np.testing.assert_allclose(final.sim.x[ego, 5:16], final.log.x[ego, 5:16])
    assert not np.allclose(final.sim.x[1, 6:16], final.log.x[1, 6:16])


def test_agent_rewards_are_the_terms_on_each_planned_agent_alone(model):
    env = mdp(model, reward="collision=1,progress=1", agent_rewards=True)
    for r, info, state in run_episode(env):
        if not info["chain_end"]:
            assert np.isnan(info["agent_task_reward"]).all()
            continue
        columns, per_agent = env._batch.agent_index[0].numpy(), info["agent_task_reward"]
        driven = (columns >= 0) & env._controlled[np.maximum(columns, 0)]  # the two cars, not the pedestrian
        assert driven.sum() == 2 and np.isnan(per_agent[~driven]).all() and np.isfinite(per_agent[driven]).all()
        # both terms are means over the scored agents: the scene's score is the mean of the agents' own
        np.testing.assert_allclose(per_agent[driven].mean(), info["task_reward"])
        alone = RewardContext.from_state(state, controlled=np.arange(3) == columns[0], window=env.replan_steps + 1)
        np.testing.assert_allclose(per_agent[0], env.reward(alone))


def test_agent_advantages_leave_the_copy_out_and_match_agents_by_id():
    returns = np.array([[[1.0, 5.0]], [[3.0, 7.0]], [[2.0, 0.0]], [[4.0, 0.0]]])  # (E=4, T=1, N=2), groups of 2
    agent_id = np.array([[[0, 1]], [[1, 0]], [[2, 3]], [[2, -1]]])
    scored = agent_id >= 0
    adv = agent_ppo.leave_one_out_advantages(returns, agent_id, scored, group_size=2)
    # group 0: agent 0 scored 1 in copy 0 and 7 in copy 1, agent 1 scored 5 and 3
    np.testing.assert_allclose(adv[:2, 0], [[1 - 7, 5 - 3], [3 - 5, 7 - 1]])
    # group 1: agent 2 in both copies; agent 3 only in copy 0 (no baseline), copy 1's column 1 is padding
    np.testing.assert_allclose(adv[2:, 0], [[-2, np.nan], [2, np.nan]])
    with pytest.raises(ValueError, match="groups of 3"):
        agent_ppo.leave_one_out_advantages(returns, agent_id, scored, group_size=3)


def test_kl_reward_is_the_unbiased_per_dim_estimate(model):
    env = mdp(model, kl_coef=2.0)
    env.reset()
    with torch.no_grad():
        mean, std = model.denoise_mean_std(env._x, env._i, model.encode_context(env._batch), env.timesteps, 1.0)
    assert env.kl_reward(mean) == pytest.approx(2.0 * 0.5)  # the reference's own mean: KL estimate -1/2 per dim
    g = torch.Generator().manual_seed(0)
    draws = [env.kl_reward(mean + std.clamp(min=env.std_floor) * torch.randn(mean.shape, generator=g))
             for _ in range(400)]
    assert abs(np.mean(draws)) < 0.05  # policy == reference: KL 0 on average


def test_actor_log_prob_is_the_per_dim_mean_of_the_closed_form_gaussian(model):
    env = mdp(model)
    obs, _ = env.reset()
    actor = DenoisingActor(model, num_steps=4, eta=1.0, std_floor=0.1)
    x = torch.randn(2, *env.latent_space.shape)
    plan = Batch({k: np.stack([v, v]) for k, v in obs["plan"].items()})
    (mean, std, real), _ = actor(Batch(plan=plan, step=np.array([2, 3]), x=x.numpy(), chain=np.array([0, 0])))
    act = torch.randn_like(x)
    logp = latent_gaussian((mean, std, real)).log_prob(act)
    rows = real[0, :, 0, 0] > 0
    assert rows.tolist() == [True, True, True, False, False]
    for b, i in enumerate([2, 3]):
        with torch.no_grad():
            mu, sd = model.denoise_mean_std(x[b:b + 1], i, model.encode_context(env._batch), actor.timesteps, 1.0)
        mu, sd, a = mu[0, rows].double(), sd[0, rows].double().clamp(min=0.1), act[b, rows].double()
        ref = (-0.5 * ((a - mu) / sd) ** 2 - sd.log() - 0.5 * math.log(2 * math.pi)).mean()
        assert logp[b].item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(std[1, rows], torch.tensor(0.1))  # the last DDIM step (std 0) takes the floor
    with pytest.raises(ValueError, match="std_floor must be > 0"):
        DenoisingActor(model, num_steps=4, eta=1.0, std_floor=0.0)


def test_leave_one_out_realism_gives_each_rollout_its_k_minus_1_others(monkeypatch):
    sc = scene()
    log = sc.traj.select(steps=slice(5, 16))
    def chunk(dx):
        moved = Trajectories.from_states(log.x + dx, log.y, log.heading, log.speed, log.length, log.width, log.valid)
        collision, offroad = trajectory_checks(moved, sc.road.drivable, sc.is_vehicle)
        return {"x": moved.x, "y": moved.y, "heading": moved.heading, "valid": moved.valid, "collision": collision,
                "offroad": offroad}

    chunks = [chunk(0.0), chunk(np.linspace(0, 8, 11)), chunk(np.linspace(0, 12, 11)), chunk(np.linspace(0, 16, 11))]
    seen = []
    original = group_env.log_likelihood_timeseries

    def spy(feature, log_values, sim_values):
        seen.append(sim_values[:, 0, 5].round(3).tolist())  # one value per rollout in the set
        return original(feature, log_values, sim_values)

    monkeypatch.setattr(group_env, "log_likelihood_timeseries", spy)
    r = chunk_realism(sc, 5, chunks, sc.is_vehicle)
    per_set = seen[::len(group_env.TIMESERIES)]  # the first feature's call of each set: all, then without 0, 1, ...
    assert [len(s) for s in per_set] == [4, 3, 3, 3, 3]
    for k in range(4):
        assert sorted(per_set[1 + k]) == sorted(np.delete(per_set[0], k).tolist())
    assert r.shape == (4,) and r[0] == r.max() > 0  # the rollout that follows the log adds the most realism


def test_group_env_adds_the_group_terms_and_leaves_one_out_baseline(model):
    env_fns = [lambda j=j: mdp(model, seed=j) for j in range(3)]  # different noise: different plans
    vec = SceneGroupVectorEnv(env_fns, group_size=3, problems=[(scene(), 5)], realism_weight=0.0)
    obs, _ = vec.reset()
    for _ in range(2):
        obs, rew, _, _, info = vec.step(np.stack([o["x"] for o in obs]))
    task = np.array([i["task_reward"] for i in info])
    kl = np.array([i["kl_reward"] for i in info])
    assert all(i["chain_end"] for i in info) and "chunk" not in info[0] and np.ptp(task) > 0
    np.testing.assert_allclose(rew, kl + task - (task.sum() - task) / 2)
    with pytest.raises(ValueError, match="group"):
        SceneGroupVectorEnv(env_fns[:1], group_size=1, problems=[(scene(), 5)])


def cfg(tmp_path, **kw) -> FinetuneConfig:
    base = dict(checkpoint=str(tmp_path / "base.pt"), reward="progress=1", start_steps=(5,), max_agents=5, steps=2,
                samples_per_scene=2, scenes_per_step=2, num_chains=2, replan_every_s=0.5, num_denoise_steps=4,
                tuned_denoise_steps=2, lr=1e-3, eta=1.0, batch_size=8, repeat=2, out=str(tmp_path / "ft.pt"),
                eval_every=1, eval_samples=1, eval_start_step=5, eval_horizon_s=1.0)
    return FinetuneConfig(**{**base, **kw})


@pytest.mark.parametrize("credit", ppo.CREDITS)
def test_finetune_logs_a_learning_curve_and_resumes_exactly(tmp_path, model, credit):
    save_checkpoint(tmp_path / "base.pt", model)
    scenes, held_out = [scene(), scene(45)], [scene(30)]
    whole = finetune(cfg(tmp_path, steps=3, out=str(tmp_path / "whole.pt"), credit=credit), scenes=scenes,
                     eval_scenes=held_out)
    c = cfg(tmp_path, credit=credit)
    path = finetune(c, scenes=scenes, eval_scenes=held_out)
    assert load_checkpoint(path)["step"] == 2
    with pytest.raises(FileExistsError, match="resume"):
        finetune(c, scenes=scenes)
    finetune(dataclasses.replace(c, steps=3), resume=True, scenes=scenes, eval_scenes=held_out)
    resumed, straight = load_model(path), load_model(whole)
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), straight.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(resumed.denoiser.parameters(), model.denoiser.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(resumed.vae.parameters(), model.vae.parameters()))
    with open(path.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2, 3]  # 3: the final weights, evaluated only
    assert all(np.isfinite(float(r[k])) for r in rows[:3] for k in ("task_reward", "kl_reward", "eval_failure_rate", "eval_task_reward"))
    assert np.isfinite(float(rows[3]["eval_failure_rate"])) and rows[3]["task_reward"] == ""
    assert path.with_suffix(".png").stat().st_size > 0


def test_validation_split_takes_every_source_in_turn_whatever_the_order():
    scenes = [dataclasses.replace(scene(), scene_id=f"{src}-{i}", source=src)
              for src, n in (("a", 6), ("b", 2), ("c", 1)) for i in range(n)]
    train, val = validation_split(scenes, 3)
    assert sorted(s.source for s in val) == ["a", "a", "b"] and len(train) == 6  # c has no scene to spare
    assert {s.scene_id for s in validation_split(scenes[::-1], 3)[1]} == {s.scene_id for s in val}
    assert validation_split(scenes, 0) == (scenes, [])
    assert sorted(s.source for s in validation_split(scenes, 100)[1]) == ["a"] * 3 + ["b"]  # half of each at most


# validation values at iterations 0, 1 and of the final weights (2); iteration 1 rates best either way
@pytest.mark.parametrize("val_metric,values", [("failure_rate", [0.5, 0.2, 0.3]), ("task_reward", [0.2, 0.5, 0.3])])
def test_validation_rates_choose_the_kept_weights(tmp_path, model, monkeypatch, val_metric, values):
    save_checkpoint(tmp_path / "base.pt", model)
    scenes = [dataclasses.replace(scene(n), scene_id=f"s{n}") for n in (40, 45, 50)]
    train, [val] = validation_split(scenes, 1)
    one_iteration = finetune(cfg(tmp_path, steps=1, out=str(tmp_path / "one.pt")), scenes=train)
    rates = iter(values)
    monkeypatch.setattr(ppo, "evaluate", lambda m, scenes, c, prefix="eval": (
        {f"{prefix}_{k}": r for r in [next(rates)] for k in ppo.EVAL_METRICS} if scenes == [val] else pytest.fail()))
    path = finetune(cfg(tmp_path, val_scenes=1, val_metric=val_metric), scenes=scenes)
    best = ppo.best_checkpoint(path)
    assert load_checkpoint(best)["step"] == 1
    kept, expected = load_model(best), load_model(one_iteration)
    assert all(torch.equal(a, b) for a, b in zip(kept.parameters(), expected.parameters()))
    with open(path.with_suffix(".csv"), newline="") as f:
        assert [float(r[f"val_{val_metric}"]) for r in csv.DictReader(f)] == values


def test_bad_finetune_settings_are_clear_errors():
    with pytest.raises(ValueError, match="loop must be one of"):
        FinetuneConfig(loop="sideways")
    with pytest.raises(ValueError, match="gamma is a discount"):
        FinetuneConfig(gamma=1.5)
    with pytest.raises(ValueError, match="val_scenes must be >= 0"):
        FinetuneConfig(val_scenes=-1)
    with pytest.raises(ValueError, match="credit must be one of"):
        FinetuneConfig(credit="everyone")
    with pytest.raises(ValueError, match="val_metric must be one of"):
        FinetuneConfig(val_metric="fun")


def test_problems_too_short_for_the_episode_are_a_clear_error(model):
    with pytest.raises(ValueError, match="fewer chains"):
        DenoisingMDP(model, model, [(scene(12), 5)], make_reward("progress=1"), num_chains=2, num_steps=4,
                     tuned_denoise_steps=2, max_agents=5, replan_every_s=0.5)
