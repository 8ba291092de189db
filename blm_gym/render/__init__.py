"""Offscreen pygame drawing of scenes and imageio video/PNG output."""
from blm_gym.render.draw import Renderer, RenderConfig, render_frame
from blm_gym.render.video import contact_sheet, write_png, write_video

__all__ = ["RenderConfig", "Renderer", "render_frame", "write_video", "write_png", "contact_sheet"]
