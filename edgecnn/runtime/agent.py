#!/usr/bin/env python3
"""edgecnn's benchmark agent: one file that needs only Python 3.9+, numpy and one runtime.

It loads a model (.onnx with ONNX Runtime, .tflite with LiteRT or tflite-runtime, an OpenVINO IR
.xml with its .bin beside it, TorchScript with torch when present), runs it on the evaluation batch
shipped with it (an .npz with uint8 images `x`, targets `y`, the normalisation `mean`/`std` and,
for a task that decodes, its name `task` and its head spec `head` as JSON), measures batch-1
latency (warm-up, then at least --min-iters iterations and --min-seconds), and prints one JSON
object. edgecnn runs this same file locally in a subprocess and copies it to remote devices, so
every score and latency in a report is measured one way.

Classification (no `head`, or a `logits` head): top-1 accuracy against the labels `y`.
Detection, keypoints (any task whose batch has a `head`): the raw head outputs become the task's
predictions here, on the device, with the task's numpy decoder (`--decoder`: its decode.py,
edgecnn/tasks/<task>/decode.py, copied beside this file by deploy, with `decode(raw, head)` and
`to_arrays(predictions)`); they are written to --predictions-out (or returned in the JSON with
--predictions-inline) for the host to score (COCO mAP, OKS AP by pycocotools), and the end-to-end
latency (normalisation, model and decoding of one image) is timed beside the model's own.

    python3 agent.py --model model.tflite --data eval.npz --threads 1
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time

import numpy as np

AGENT_VERSION = 5
WARMUP_SECONDS = 0.2
E2E_ITERS = 200  # end-to-end timings of a decoding task (decoding, NMS included): at most this many, or --min-iters

# The one table of model formats and runtimes. The agent is copied alone to devices, so the table
# lives here and the rest of edgecnn imports it from this file.
FORMAT_RUNTIMES = {
    "onnx": ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt"),
    "tflite": ("litert", "tflite-runtime"),
    "pytorch": ("torch", "torch-cuda"),
    "openvino": ("openvino",),
}
MODEL_EXTENSIONS = {  # an OpenVINO IR is its .xml, with the .bin beside it
    ".onnx": "onnx", ".tflite": "tflite", ".xml": "openvino", ".ts": "pytorch", ".torchscript": "pytorch",
    ".pt": "pytorch",
}
# what "auto" picks on a desktop CPU
CPU_RUNTIMES = {"onnx": "onnxruntime", "tflite": "litert", "openvino": "openvino", "pytorch": "torch"}
GPU_RUNTIMES = {"onnx": "onnxruntime-cuda", "pytorch": "torch-cuda"}  # local-gpu; TFLite has no desktop GPU path


def _rss_mb() -> float:
    """Current resident memory of this process in MB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError):
        return _peak_mb()


def _peak_mb() -> float:
    """Peak resident memory of this process in MB: VmHWM (reset at exec, unlike ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e3
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e3 if sys.platform != "darwin" else peak / 1e6


class OnnxRuntime:
    """ONNX Runtime on CPU (or CUDA / TensorRT providers when asked: then on them, or an error, never the CPU)."""

    def __init__(self, path: str, threads: int, providers: list[str] | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        wanted = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        accelerators = [p for p in providers or () if p != "CPUExecutionProvider"]
        if accelerators and wanted[0] not in accelerators:
            raise RuntimeError(
                f"{' or '.join(accelerators)} is not available in onnxruntime {ort.__version__} (it has "
                f"{', '.join(available)}), so the model would run on the CPU; install onnxruntime-gpu or bench on "
                "local-cpu"
            )
        self.session = ort.InferenceSession(path, opts, providers=wanted)
        ran = self.session.get_providers()
        if accelerators and ran[0] not in accelerators:
            raise RuntimeError(
                f"onnxruntime could not start {accelerators[0]} and fell back to {ran[0]}: refusing to time CPU "
                "numbers as GPU numbers; check the CUDA/cuDNN libraries onnxruntime-gpu needs"
            )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.name = f"onnxruntime {ort.__version__}"
        self.providers = self.session.get_providers()
        self.precision = None

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class LiteRT:
    """LiteRT (ai-edge-litert) or, where that is what a device has, tflite-runtime."""

    def __init__(self, path: str, threads: int, prefer: str = "auto"):
        Interpreter, self.name = _tflite_interpreter(prefer)
        self.interp = Interpreter(model_path=path, num_threads=threads)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.batch = int(self.inp["shape"][0])
        self.providers = ["XNNPACK"]
        self.precision = None

    def run(self, x: np.ndarray) -> np.ndarray:
        dtype = self.inp["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zero = self.inp["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        self.interp.set_tensor(self.inp["index"], x)
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"])
        if self.out["dtype"] in (np.int8, np.uint8):
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y


def _tflite_interpreter(prefer: str):
    if prefer in ("auto", "litert"):
        try:
            from ai_edge_litert import __version__ as v  # type: ignore[attr-defined]
            from ai_edge_litert import interpreter as lit

            return lit.Interpreter, f"litert {v}"
        except ImportError:
            try:
                from ai_edge_litert.interpreter import Interpreter

                return Interpreter, "litert"
            except ImportError:
                if prefer == "litert":
                    raise
    import tflite_runtime
    from tflite_runtime.interpreter import Interpreter

    return Interpreter, f"tflite-runtime {getattr(tflite_runtime, '__version__', '?')}"


class TorchScript:
    """A TorchScript file on PyTorch (CPU, or CUDA when --cuda)."""

    def __init__(self, path: str, threads: int, cuda: bool = False):
        import torch

        torch.set_num_threads(threads)
        if cuda and not torch.cuda.is_available():
            raise RuntimeError("torch-cuda: torch sees no CUDA device, so the model would run on the CPU; "
                               "bench on local-cpu")
        self.torch = torch
        self.device = "cuda" if cuda else "cpu"
        self.model = torch.jit.load(path, map_location=self.device).eval()
        self.batch = None
        self.name = f"torch {torch.__version__.split('+')[0]}"
        self.providers = [self.device]
        self.precision = None

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(x).to(self.device))
            if self.device == "cuda":
                self.torch.cuda.synchronize()
            return out.float().cpu().numpy()


class OpenVINO:
    """OpenVINO on CPU: an IR (.xml, weights in the .bin beside it) at the inference precision it asks for.

    The precision (f32, bf16, f16) is the IR's rt_info `edgecnn/inference_precision`, passed as
    INFERENCE_PRECISION_HINT; OpenVINO falls back to what the CPU has, and `precision` is what ran
    (for an int8 file: the precision of the layers left in float). One stream, the latency hint and
    INFERENCE_NUM_THREADS = `threads`.
    """

    PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}

    def __init__(self, path: str, threads: int):
        if "openvino_telemetry" not in sys.modules:  # never send usage events (import then fails softly)
            sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path)
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads)}
        if model.has_rt_info(["edgecnn", "inference_precision"]):
            config["INFERENCE_PRECISION_HINT"] = model.get_rt_info(["edgecnn", "inference_precision"]).astype(str)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        shape = self.compiled.input(0).get_partial_shape()
        self.batch = shape[0].get_length() if shape.is_static else None
        self.name = f"openvino {ov.__version__.split('-')[0]}"
        self.providers = ["CPU"]
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = self.PRECISIONS.get(ran, ran)
        # a static input is filled in place: infer({0: x}) costs ~50 us a call more (a new Tensor each time)
        self.input = self.request.get_input_tensor(0).data if self.batch else None
        self.output = self.request.get_output_tensor(0)

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.input is None:
            self.request.infer({0: x})
            return self.request.get_output_tensor(0).data.copy()
        self.input[...] = x
        self.request.infer()
        return self.output.data.copy()


def open_runtime(path: str, threads: int, runtime: str = "auto"):
    """The runtime adapter for a model file, by its extension (and `runtime` preference)."""
    ext = os.path.splitext(path)[1].lower()
    fmt = MODEL_EXTENSIONS.get(ext)
    if fmt == "onnx":
        providers = {
            "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "onnxruntime-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        }.get(runtime)
        return OnnxRuntime(path, threads, providers)
    if fmt == "tflite":
        return LiteRT(path, threads, runtime if runtime in FORMAT_RUNTIMES["tflite"] else "auto")
    if fmt == "pytorch":
        return TorchScript(path, threads, cuda=runtime == "torch-cuda")
    if fmt == "openvino":
        return OpenVINO(path, threads)
    raise ValueError(f"{path}: unknown model format {ext!r}; expected {', '.join(MODEL_EXTENSIONS)}")


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float32) / 255.0 - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)).astype(np.float32)


def raw_outputs(rt, x: np.ndarray, mean: np.ndarray, std: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """The model's raw fp32 outputs over the whole evaluation batch, (N, ...) as the model returns them."""
    step = rt.batch or batch_size
    outs = []
    for i in range(0, len(x), step):
        xb = normalize(x[i : i + step], mean, std)
        if rt.batch and len(xb) < rt.batch:  # a fixed-batch model: pad the last batch
            pad = np.zeros((rt.batch - len(xb),) + xb.shape[1:], np.float32)
            outs.append(rt.run(np.concatenate([xb, pad]))[: len(xb)])
        else:
            outs.append(rt.run(xb))
    return np.concatenate(outs).astype(np.float32)


def evaluate(
    rt, x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray, batch_size: int = 250
) -> tuple[float, np.ndarray]:
    """Top-1 accuracy and logits (N, classes) over the whole evaluation batch."""
    logits = raw_outputs(rt, x, mean, std, batch_size).reshape(len(x), -1)
    return float((logits.argmax(1) == y).mean()), logits


def load_decoder(path: str):
    """A task's numpy decoder (its decode.py, numpy only) loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("edgecnn_agent_decode", path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the task's decoder is missing; copy its decode.py beside the agent")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def measure_end_to_end(rt, image: np.ndarray, mean: np.ndarray, std: np.ndarray, decode, iters: int) -> dict:
    """Batch-1 latency of one uint8 image to the task's predictions: normalisation, the model, decoding (NMS)."""
    times = []
    for _ in range(max(1, iters)):
        t0 = time.perf_counter_ns()
        decode(rt.run(normalize(image, mean, std)))
        times.append((time.perf_counter_ns() - t0) / 1e6)
    arr = np.array(times)
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean()), "iters": len(times)}


def measure_latency(
    rt, sample: np.ndarray, warmup: int, min_iters: int, min_seconds: float, max_iters: int = 100000
) -> dict:
    """Batch-1 latency: warm-up, then at least `min_iters` runs and `min_seconds` of them.

    The warm-up lasts at least `warmup` runs and WARMUP_SECONDS (caches, allocators and clocks
    settle); the garbage collector is paused while timing so no run pays for a collection.
    """
    start = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - start < WARMUP_SECONDS:
        rt.run(sample)
        done += 1
    times: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < min_seconds):
            t0 = time.perf_counter_ns()
            rt.run(sample)
            times.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    arr = np.array(times)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "iters": len(times),
        "warmup_iters": done,
    }


def pin_to_cpus(cpus: list[int] | None = None) -> list[int] | None:
    """Pin this process to `cpus` (the host's lease, --cpu), or without them to the last CPU it may use.

    No migrations between timed runs; returns the CPUs the process now runs on, None if it cannot pin.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    target = sorted(set(cpus)) if cpus else allowed[-1:]
    if not set(target) <= set(allowed):
        raise ValueError(f"--cpu {','.join(map(str, target))}: not among this process's CPUs {allowed}")
    try:
        os.sched_setaffinity(0, set(target))
        return sorted(os.sched_getaffinity(0))
    except OSError:
        return None


def model_size(path: str) -> int:
    """Bytes of a model as deployed: an OpenVINO .xml counts its .bin too."""
    size = os.path.getsize(path)
    if path.lower().endswith(".xml") and os.path.isfile(path[:-4] + ".bin"):
        size += os.path.getsize(path[:-4] + ".bin")
    return size


def run(
    model: str,
    data: str,
    threads: int = 1,
    runtime: str = "auto",
    warmup: int = 10,
    min_iters: int = 50,
    min_seconds: float = 1.0,
    logits_out: str | None = None,
    pin: bool = True,
    cpus: list[int] | None = None,
    decoder: str | None = None,
    predictions_out: str | None = None,
    predictions_inline: bool = False,
) -> dict:
    """Benchmark one model file on one evaluation batch; returns the JSON-able result.

    With a head in the batch (a detector's, a keypoint model's), `decoder` (the task's decode.py; default:
    beside this file) turns the raw outputs into the task's predictions, saved to `predictions_out` (and,
    with `predictions_inline`, returned in the result as lists, for a device the host cannot copy files
    from); `accuracy` is then None.

    With `cpus` (leased by the host) the process runs on those CPUs only; without, a one-thread run
    (with `pin`) is pinned to the last CPU it may use. Pinning steadies latency.
    """
    threads = threads or len(cpus or ()) or (os.cpu_count() or 1)
    pinned = pin_to_cpus(cpus) if pin and (cpus or threads == 1) else None
    with np.load(data) as z:
        x, y, mean, std = z["x"], z["y"], z["mean"].astype(np.float32), z["std"].astype(np.float32)
        head = json.loads(str(z["head"])) if "head" in z.files else {"kind": "logits"}
        task = str(z["task"]) if "task" in z.files else "classification" if head.get("kind") == "logits" \
            else "detection"  # batches of agent version 4 named no task: only detectors had heads
    dec = None
    if head.get("kind") != "logits":
        dec = load_decoder(decoder or os.path.join(os.path.dirname(os.path.abspath(__file__)), "decode.py"))
    base = _rss_mb()
    t0 = time.perf_counter()
    rt = open_runtime(model, threads, runtime)
    load_ms = (time.perf_counter() - t0) * 1e3
    e2e = inline = None
    if dec is None:
        acc, logits = evaluate(rt, x, y, mean, std)
    else:
        acc, logits = None, raw_outputs(rt, x, mean, std)
        arrays = dec.to_arrays(dec.decode(logits, head))
        if predictions_out:
            with open(predictions_out, "wb") as f:
                np.savez(f, **arrays)
        if predictions_inline:
            inline = {k: np.round(v, 3).tolist() if v.dtype.kind == "f" else v.tolist() for k, v in arrays.items()}
    if logits_out:
        np.save(logits_out, logits)
    sample = normalize(x[:1], mean, std)
    if rt.batch and rt.batch > 1:
        sample = np.repeat(sample, rt.batch, axis=0)
    latency = measure_latency(rt, sample, warmup, min_iters, min_seconds)
    if dec is not None and (not rt.batch or rt.batch == 1):
        e2e = measure_end_to_end(rt, x[:1], mean, std, lambda raw: dec.decode(raw, head),
                                 min(latency["iters"], max(min_iters, E2E_ITERS)))
    return {
        "agent_version": AGENT_VERSION,
        "model": os.path.basename(model),
        "size_bytes": model_size(model),
        "runtime": rt.name,
        "inference_precision": rt.precision,
        "providers": rt.providers,
        "threads": threads,
        "pinned_cpu": pinned[0] if pinned and len(pinned) == 1 else None,
        "cpus": pinned,
        "batch_size": 1,
        "accuracy": acc,
        "eval_samples": int(len(y)),
        "load_ms": load_ms,
        "latency_ms": latency,
        "e2e_latency_ms": e2e,
        "task": task,
        **({"predictions": inline} if inline is not None else {}),
        "peak_memory_mb": _peak_mb(),
        "baseline_memory_mb": base,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


RUNTIME_MODULES = {
    "onnxruntime": ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    "litert": ("ai_edge_litert", ("ai-edge-litert",)),
    "tflite-runtime": ("tflite_runtime", ("tflite-runtime",)),
    "torch": ("torch", ("torch",)),
    "openvino": ("openvino", ("openvino",)),
}


def list_runtimes() -> dict:
    """The runtimes installed here (found without importing them) and this interpreter's platform."""
    import importlib.util
    from importlib import metadata

    found = {}
    for name, (module, dists) in RUNTIME_MODULES.items():
        if importlib.util.find_spec(module) is None:
            continue
        version = "?"
        for dist in dists:
            try:
                version = metadata.version(dist)
                found[name if dist != "onnxruntime-gpu" else "onnxruntime-cuda"] = version
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            found[name] = version
    return {
        "agent_version": AGENT_VERSION,
        "runtimes": found,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if argv is None:
        argv = sys.argv[1:]
    if "--list-runtimes" in argv:
        print(json.dumps(list_runtimes()))
        return 0
    ap.add_argument("--list-runtimes", action="store_true", help="Print the installed runtimes as JSON and exit.")
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--runtime",
        default="auto",
        choices=["auto", *(rt for rts in FORMAT_RUNTIMES.values() for rt in rts)],
    )
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--min-iters", type=int, default=50)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--logits-out", help="Save the raw outputs (.npy).")
    ap.add_argument("--decoder", help="The task's numpy decoder, decode.py (default: beside this file).")
    ap.add_argument("--predictions-out", "--detections-out", dest="predictions_out",
                    help="Save the task's decoded predictions (.npz).")
    ap.add_argument("--predictions-inline", "--detections-inline", dest="predictions_inline", action="store_true",
                    help="Return the task's decoded predictions in the JSON.")
    ap.add_argument("--no-pin", action="store_true", help="Do not pin a one-thread run to one CPU.")
    ap.add_argument("--cpu", help="Run on these CPUs only (e.g. 3 or 2,3): the host's lease, so timings never share "
                    "a core.")
    a = ap.parse_args(argv)
    try:
        cpus = [int(c) for c in a.cpu.split(",")] if a.cpu else None
        result = run(
            a.model, a.data, a.threads, a.runtime, a.warmup, a.min_iters, a.min_seconds, a.logits_out, not a.no_pin,
            cpus, a.decoder, a.predictions_out, a.predictions_inline,
        )
    except ImportError as e:
        print(json.dumps({"error": f"no runtime for {a.model}: {e}"}))
        return 3
    except Exception as e:  # noqa: BLE001 - the caller reads the JSON error
        print(json.dumps({"error": f"{e.__class__.__name__}: {e}"}))
        return 4
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
