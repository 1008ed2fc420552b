"""edgecnn: compress a trained CNN and prove every number on the device it ships to."""

__version__ = "0.1.0"
