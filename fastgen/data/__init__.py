"""Data for fastgen's models: a procedural NeRF scene (no download) with posed training and held-out views."""
from fastgen.data import scenes
from fastgen.data.scenes import Scene, camera_rays, procedural_scene, render_views

__all__ = ["Scene", "camera_rays", "procedural_scene", "render_views", "scenes"]
