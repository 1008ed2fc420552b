"""The pipeline's stages, one module each; registry.py lists them in order (`default_stages()`)."""
