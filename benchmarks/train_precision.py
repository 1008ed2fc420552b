"""Training precision on this CPU: fp32 against bf16 autocast, side by side, and what `precision: auto` picks.

    flock /tmp/edgecnn-cpu.lock python benchmarks/train_precision.py   # writes benchmarks/train_precision.json

One training step (forward, cross-entropy, backward, SGD) of the zoo's `cifar_resnet20` on a
batch of random 32x32 images, channels-last, in each precision through `autocast_for`, the
context edgecnn's training loop uses; --rounds alternating rounds of --steps steps, the best
images/s of each precision kept. On a CPU with native bf16 (AVX-512 BF16, AMX) bf16 should win;
on an AVX-512 CPU without it oneDNN emulates bf16, and `auto` must then pick fp32.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from runtimes import lscpu

from edgecnn.compression.train import autocast_for, cpu_supports_bf16
from edgecnn.core.environment import environment
from edgecnn.models.files import ModelInfo, build_model

HERE = Path(__file__).resolve().parent


def images_per_second(model, opt, x, y, precision: str, steps: int) -> float:
    ctx, _ = autocast_for(precision, torch.device("cpu"))
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        with ctx:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return steps * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8, help="training steps per precision and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "train_precision.json")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(ModelInfo("cifar_resnet20", {}, 10, (3, 32, 32))).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(a.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch,))
    precisions = ("fp32", "bf16")
    for p in precisions:  # warm-up: oneDNN builds its kernels
        images_per_second(model, opt, x, y, p, 2)
    rounds = {p: [] for p in precisions}
    for r in range(a.rounds):  # alternating order, so drift on a shared host hits both
        for p in precisions if r % 2 == 0 else precisions[::-1]:
            rounds[p].append(round(images_per_second(model, opt, x, y, p, a.steps), 1))
    best = {p: max(v) for p, v in rounds.items()}
    auto = autocast_for("auto", torch.device("cpu"))[1]
    out = {
        "benchmark": "train_precision",
        "command": "python benchmarks/train_precision.py",
        "decision_split": None,
        "figures_split": None,
        "settings": {"model": "cifar_resnet20", "batch": a.batch, "steps": a.steps, "rounds": a.rounds,
                     "threads": torch.get_num_threads(), "channels_last": True},
        "environment": environment(),
        "lscpu": lscpu(),
        "onednn_offers_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "native_bf16": cpu_supports_bf16(),
        "auto_picks": auto,
        "images_per_s_rounds": rounds,
        "images_per_s": best,
        "bf16_over_fp32": round(best["bf16"] / best["fp32"], 3),
        "checks": {"auto_picks_the_faster": (auto == "bf16") == (best["bf16"] > best["fp32"])},
    }
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("onednn_offers_bf16", "native_bf16", "auto_picks", "images_per_s",
                                          "bf16_over_fp32", "checks")}, indent=2))


if __name__ == "__main__":
    main()
