"""blm_gym.sim"""
