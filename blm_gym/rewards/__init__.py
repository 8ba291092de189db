"""Rule-based reward terms (numpy, non-differentiable) and gymnasium wrappers built on them."""
from blm_gym.rewards.terms import (
    REWARD_TERMS,
    BoundTerm,
    RewardContext,
    RewardTerm,
    WeightedReward,
    collision,
    comfort,
    get_term,
    make_reward,
    offroad,
    progress,
    register_term,
    rss_violations,
    safety_critical,
    speed_limit,
    target_speed,
    time_to_collision_penalty,
)
from blm_gym.rewards.wrappers import (
    CollisionPenalty,
    ComfortPenalty,
    OffroadPenalty,
    ProgressReward,
    RewardTermWrapper,
    SpeedLimitPenalty,
    TTCPenalty,
)

__all__ = [
    "REWARD_TERMS", "BoundTerm", "RewardContext", "RewardTerm", "WeightedReward", "collision", "comfort",
    "get_term", "make_reward", "offroad", "progress", "register_term", "rss_violations", "safety_critical",
    "speed_limit", "target_speed", "time_to_collision_penalty", "CollisionPenalty", "ComfortPenalty",
    "OffroadPenalty", "ProgressReward", "RewardTermWrapper", "SpeedLimitPenalty", "TTCPenalty",
]
