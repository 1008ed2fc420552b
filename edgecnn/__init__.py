"""edgecnn: compress a trained CNN and prove every number on the device it ships to.

The Python API (edgecnn.api) is re-exported here lazily, so `import edgecnn` stays cheap:

    import edgecnn
    run = edgecnn.compress("recipes/quickstart.yaml", overrides={"distill.epochs": 2})
"""

from typing import Any

__version__ = "0.1.0"

_API = ("Run", "UserError", "compress", "train", "distill", "prune", "export", "quantize", "bench", "deploy",
        "compare", "list_devices")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from edgecnn import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgecnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
