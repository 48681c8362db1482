"""Data for fastgen's models, none of it downloaded: scikit-learn's digits as image tensors, and a
procedural NeRF scene with posed training and held-out views."""
from fastgen.data import digits, scenes
from fastgen.data.digits import load_digits_images
from fastgen.data.scenes import Scene, camera_rays, procedural_scene, render_views

__all__ = ["Scene", "camera_rays", "digits", "load_digits_images", "procedural_scene", "render_views", "scenes"]
