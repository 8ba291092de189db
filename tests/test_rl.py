"""The denoising-step MDP and PPO fine-tuning, on a tiny BLM model and a hand-made scene."""
from __future__ import annotations

import csv
import dataclasses
import math

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from tianshou.data import Batch, Collector, VectorReplayBuffer
from tianshou.utils.torch_utils import policy_within_training_step

from blm_gym.models.blm import BLMConfig, BLMModel
from blm_gym.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from blm_gym.rewards import make_reward
from blm_gym.rl import DenoisingMDP, SceneBank
from blm_gym.rl.ppo import DiffusionActor, FinetuneConfig, build_ppo, finetune, latent_gaussian, normalise_per_group
from test_rewards import make_scene

torch.set_num_threads(1)
TINY = BLMConfig(history_steps=5, future_steps=8, latent_dim=4, vae_channels=16, d_model=16, num_layers=1,
                 num_heads=2, train_steps=20, sample_steps=4)


def scene():
    """Three cars (one parked) on a straight road; 30 steps; 4 agent slots, so one is padding."""
    t = np.arange(30, dtype=np.float32)
    return make_scene(np.stack([10 + t, 30 + 0.8 * t, 50 + 0 * t]), np.stack([0 * t, 3 + 0 * t, -3 + 0 * t]),
                      speed=np.stack([np.full(30, 10.0), np.full(30, 8.0), np.zeros(30)]))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BLMModel(TINY).eval()


@pytest.fixture(scope="module")
def bank(model):
    return SceneBank([scene(), scene()], model, step=10, max_agents=4)


def cfg(tmp_path, **kw) -> FinetuneConfig:
    base = dict(checkpoint=str(tmp_path / "base.pt"), reward="progress=1", start_steps=(10,), max_agents=4, steps=2,
                samples_per_scene=4, scenes_per_step=2, num_denoise_steps=4, tuned_denoise_steps=2, lr=1e-3, eta=1.0,
                batch_size=8, repeat=2, out=str(tmp_path / "ft.pt"))
    return FinetuneConfig(**{**base, **kw})


def test_mdp_episode_is_the_last_k_steps_with_a_terminal_reward(model, bank):
    env = DenoisingMDP(model, bank, make_reward("collision=1,progress=0.1"), num_steps=4, tuned_denoise_steps=2, seed=0)
    obs, _ = env.reset()
    assert obs["step"] == 2 and obs["scene"] == 0 and obs["x"].shape == (4, 2, 4)
    obs, r, term, _, _ = env.step(obs["x"])
    assert (r, term, obs["step"]) == (0.0, False, 3)
    _, r, term, _, info = env.step(obs["x"])
    assert term and set(info["reward_terms"]) == {"collision", "progress"}
    assert r == pytest.approx(info["reward_terms"]["collision"] + 0.1 * info["reward_terms"]["progress"])
    assert env.reset()[0]["scene"] == 1  # episodes cycle through the scenes
    check_env(env, skip_render_check=True)


def test_policy_log_prob_is_the_per_dim_mean_of_the_closed_form_gaussian(model, bank):
    actor = DiffusionActor(model, bank, num_steps=4, eta=1.0, std_floor=0.1)
    x = torch.randn(3, 4, 2, 4)
    obs = Batch(scene=np.array([0, 1, 0]), step=np.array([2, 3, 3]), x=x.numpy())
    (mean, std, real_rows), _ = actor(obs)
    act = torch.randn_like(x)
    logp = latent_gaussian((mean, std, real_rows)).log_prob(act)
    real = bank.agent_mask([0])[0]
    assert torch.equal(real_rows.bool(), real[None, :, None, None].expand_as(x))
    for b, (s, i) in enumerate([(0, 2), (1, 3), (0, 3)]):
        with torch.no_grad():
            mu, sd = model.denoise_mean_std(x[b:b + 1], i, model.encode_context(bank.batches[s]), actor.timesteps, 1.0)
        mu, sd = mu[0].double(), sd[0].double().clamp(min=0.1)
        mu, sd = torch.where(real[:, None, None], mu, 0.0), torch.where(real[:, None, None], sd, 1.0)
        a = act[b].double()
        ref = (-0.5 * ((a - mu) / sd) ** 2 - sd.log() - 0.5 * math.log(2 * math.pi))[real].mean()
        assert logp[b].item() == pytest.approx(ref.item(), rel=1e-5)
    # The last DDIM step is deterministic (std 0): the policy's std is the floor there, never 0.
    assert torch.allclose(std[1][real], torch.tensor(0.1)) and (std > 0).all()


def test_std_floor_must_be_positive(model, bank):
    with pytest.raises(ValueError, match="std_floor must be > 0"):
        DiffusionActor(model, bank, num_steps=4, eta=1.0, std_floor=0.0)


def test_first_update_has_ratio_one_and_zero_kl(tmp_path, model):
    c = cfg(tmp_path)
    trainee = BLMModel(TINY)
    trainee.load_state_dict(model.state_dict())
    algo, envs = build_ppo(c, trainee, model, [scene(), scene()], make_reward(c.reward))
    buffer = VectorReplayBuffer(16, 4)
    collector = Collector(algo, envs, buffer)
    collector.reset()
    with policy_within_training_step(algo.policy):
        collector.collect(n_step=16)
        stats = algo.update(buffer, batch_size=None, repeat=2)
    assert stats.initial_ratio_error < 1e-4  # logp_old comes from the same weights
    assert stats.initial_kl == 0.0  # trainee == reference before any step
    assert stats.kl.max > 0.0  # ...and the update moved it


def test_scene_bank_plans_every_scene_from_every_step_it_has(model):
    b = SceneBank([scene(), scene()], model, step=(10, 20, 29), max_agents=4)
    assert b.steps == [10, 10, 20, 20, 29, 29] and len(b) == 6  # step-major: one iteration sees many scenes
    with pytest.raises(ValueError, match="lower the planning steps"):
        SceneBank([scene()], model, step=(30, 40), max_agents=4)


def test_decoded_reward_scores_vehicles_and_off_road_counts_vehicles_leaving_the_road(model, bank):
    from blm_gym.rl import decoded_reward_context

    b = bank.batches[0]
    rows = int((b.agent_mask[0] & (b.agent_index[0] >= 0)).sum())
    stay = np.broadcast_to(b.state_world[0, :4].numpy()[:, None, :], (4, 8, 4)).astype(np.float64)
    ctx = decoded_reward_context(bank, 0, stay)
    assert ctx.x.shape == (rows, 9) and ctx.controlled.all()  # three cars, all vehicles
    assert make_reward("collision=1,offroad(from_road=1)=1")(ctx) == 0.0
    gone = stay.copy()
    gone[0, 4:, 1] = 1e4  # the first car leaves the road half-way through the plan
    assert make_reward("offroad(from_road=1)")(decoded_reward_context(bank, 0, gone)) == pytest.approx(-1 / rows)


def test_normalise_per_group_centres_and_scales_each_group():
    adv = torch.tensor([1.0, 3.0, 10.0, 30.0, 5.0])
    out = normalise_per_group(adv, np.array([0, 0, 1, 1, 2]))
    assert torch.allclose(out, torch.tensor([-1.0, 1.0, -1.0, 1.0, 0.0]), atol=1e-6)


def test_integer_reward_trains_without_gradient_through_the_reward(tmp_path, model):
    from blm_gym.rewards import register_term

    seen = []

    @register_term("progress_tenth_mm")
    def progress_tenth_mm(ctx):  # integer-valued and non-differentiable by construction
        seen.append(ctx)
        # 0.1 mm resolution: the untrained tiny model's samples differ by millimetres only, and a
        # reward that is equal for every sample has zero advantages (nothing to learn)
        return np.rint(1e4 * (ctx.x[..., -1] - ctx.x[..., 0])).sum(-1).astype(np.int64)

    save_checkpoint(tmp_path / "base.pt", model)
    c = cfg(tmp_path, reward="progress_tenth_mm=1")
    path = finetune(c, scenes=[scene(), scene()])
    # The reward only ever sees numpy arrays: no autograd graph can reach it or leave it.
    assert seen and all(isinstance(ctx.x, np.ndarray) for ctx in seen)
    assert not any(isinstance(getattr(ctx, f.name), torch.Tensor) for ctx in seen for f in dataclasses.fields(ctx))
    tuned = load_model(path)
    changed = [not torch.equal(a, b) for a, b in zip(tuned.denoiser.parameters(), model.denoiser.parameters())]
    assert any(changed)
    assert all(torch.equal(a, b) for a, b in zip(tuned.vae.parameters(), model.vae.parameters()))


def test_reward_has_no_path_to_the_loss_gradient(tmp_path, model):
    """Rewards reach PPO as plain numbers: advantages and returns carry no autograd graph."""
    c = cfg(tmp_path)
    algo, envs = build_ppo(c, BLMModel(TINY), model, [scene(), scene()], make_reward("progress=1"))
    buffer = VectorReplayBuffer(16, 4)
    collector = Collector(algo, envs, buffer)
    collector.reset()
    with policy_within_training_step(algo.policy):
        collector.collect(n_step=16)
    batch, idx = buffer.sample(0)
    assert isinstance(batch.rew, np.ndarray) and batch.rew.dtype.kind == "f"
    with policy_within_training_step(algo.policy):
        pre = algo._preprocess_batch(batch, buffer, idx)
    assert not pre.adv.requires_grad and pre.adv.grad_fn is None
    assert not pre.returns.requires_grad and pre.returns.grad_fn is None


def test_finetune_logs_checkpoints_and_resumes(tmp_path, model):
    save_checkpoint(tmp_path / "base.pt", model)
    c = cfg(tmp_path)
    path = finetune(c, scenes=[scene(), scene()])
    assert load_checkpoint(path)["step"] == 2
    with pytest.raises(FileExistsError, match="resume"):
        finetune(c, scenes=[scene(), scene()])
    finetune(dataclasses.replace(c, steps=3), resume=True, scenes=[scene(), scene()])
    assert load_checkpoint(path)["step"] == 3
    with open(path.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2]
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("reward_mean", "kl", "clip_fraction"))
    load_model(path)  # a plain BLM checkpoint: the closed-loop policy can load it


def test_ego_replays_log_puts_the_logged_ego_in_the_reward_context(model, bank):
    from blm_gym.rl import decoded_reward_context

    b, sc, t0 = bank.batches[0], bank.scenes[0], bank.steps[0]
    stay = np.broadcast_to(b.state_world[0, :4].numpy()[:, None, :], (4, 8, 4)).astype(np.float64)
    ctx = decoded_reward_context(bank, 0, stay, ego_replays_log=True)
    n = min(9, sc.num_steps - t0)
    np.testing.assert_allclose(ctx.x[ctx.ego_index, :n], sc.traj.x[sc.ego_index, t0:t0 + n], atol=1e-5)
    plain = decoded_reward_context(bank, 0, stay)
    assert np.ptp(plain.x[plain.ego_index]) == 0.0 < np.ptp(ctx.x[ctx.ego_index])  # the plan stayed, the log moves
