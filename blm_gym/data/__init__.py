"""blm_gym.data"""
