"""Triton's part of the hot path on one GPU: the served version through tritonserver against the same version in
process, on the same device.

    python3 bench/triton_gpu.py --bundle .gpu --out DIR [--seconds 8] [--workers 1,2,4,8,12] [--in-flight 2]
                                [--instances 2,4]

``bench/gpu_bundle.py`` prepares ``--bundle`` (the server, the client's wheels, the model repository less the
version's weights, inputs); its docstring gives the device tool's command. In one run:

1. The version gets random weights of its shape (MiniLM: 91 MB that need not travel; the cost is the same).
2. ``raw``: the version in this process (its own ``runtime.Predictor``, torch, fp16 on a GPU) on requests of 64 rows
   as the workers send them, tokenization included; ``model_only``: the network alone on batches tokenized before
   (64 rows, and 256: what a larger ``max_batch_size`` would give).
3. tritonserver serves the version with the ``config.pbtxt`` the training stage writes (python backend, ``KIND_AUTO``:
   two instances per GPU in fp16; dynamic batching). W client processes, as W inference workers, each keep
   ``--in-flight`` requests of 64 rows in flight over gRPC; for each W: sequences/s, request latency p50/p99, and the
   GPU's mean utilisation when ``torch.cuda.utilization`` can read it. ``--instances 2,4`` measures again with each
   other count of instances per device (the version reloaded with that count in its config).
4. ``max_abs_diff``: Triton's probabilities against the process's on the same inputs, and ``max_abs_diff_fp32``
   against float32 in process as training computes them: both within ``--atol``, the smoke tolerance, or the run
   fails. ``probs_std`` shows that the answers vary enough across inputs for that to tell.

Prints one JSON line (``ratio`` = the best Triton rate / ``raw``), writes it to ``DIR/triton_gpu.json``, the server's
log to ``DIR/tritonserver.log`` and, with matplotlib, ``DIR/triton_gpu.png``. It imports nothing of driftloop but the
version's own files (the GPU machine has no pydantic, Kafka or Feast). Without a GPU it measures the CPU instances
(``tests/bench`` runs it so, with a tiny version, against the serving environment's tritonserver).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

MODEL = "classifier"
VERSION = "1"
ROWS = 64  # the served version's max_batch_size: the size of the workers' requests
SEED = 0
LOGIT_SPREAD = 1.0
READY_TIMEOUT_S = 300.0


# --- the version ------------------------------------------------------------------------------------------------


def load_runtime(version_dir: Path):
    """The version's ``runtime.py``, imported by path as Triton's stub does (its ``network.py`` comes with it)."""
    spec = importlib.util.spec_from_file_location("bench_version_runtime", version_dir / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_random_weights(runtime, version_dir: Path, texts: list[str], features: np.ndarray) -> None:
    """Weights of the version's shape, saved as training does: the encoder drawn as BERT initialises it (normal, std
    0.02), the last layer scaled so that the logits vary by about 1 across ``texts`` (near-uniform probabilities
    would let any answer pass the comparison with Triton's)."""
    import torch
    from safetensors.torch import save_file

    network = runtime.load_network()
    config = json.loads((version_dir / runtime.ENCODER_CONFIG_FILE).read_text(encoding="utf-8"))
    metadata = runtime.read_metadata(version_dir)
    torch.manual_seed(SEED)
    model = network.Classifier(
        network.BertEncoder(config), config["hidden_size"], len(metadata["feature_names"]), len(metadata["labels"])
    ).eval()
    with torch.no_grad():
        for name, parameter in model.encoder.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            elif "LayerNorm" in name:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02)
        max_length = min(int(metadata["max_seq_len"]), int(config["max_position_embeddings"]))
        encoder = runtime.TextEncoder(version_dir / runtime.TOKENIZER_DIR / runtime.TOKENIZER_FILE, max_length)
        rows = slice(0, 4 * ROWS)
        ids, mask = encoder(texts[rows])
        inputs = (torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(features[rows]))
        logits = model(*inputs)
        spread = float((logits - logits.mean(dim=0)).std())
        last = model.head[-1]
        last.weight.mul_(LOGIT_SPREAD / max(spread, 1e-6))
        last.bias.zero_()
        last.bias.sub_(model(*inputs).mean(dim=0))  # every label about as likely on average
    state = {key: value.detach().float().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(version_dir / runtime.WEIGHTS_FILE), metadata={"format": "pt"})


def prepare_repository(bundle: Path, work: Path, texts: list[str], features: np.ndarray) -> Path:
    """``work/repo/classifier/{config.pbtxt, 1/}`` from the bundle, with weights; returns the version folder."""
    shutil.copytree(bundle / "repo", work / "repo")
    version_dir = work / "repo" / MODEL / VERSION
    write_random_weights(load_runtime(version_dir), version_dir, texts, features)
    return version_dir


# --- in process -------------------------------------------------------------------------------------------------


def rate(step, batches: list, seconds: float) -> float:
    """Rows per second of ``step(batch)`` cycling over ``batches`` for ``seconds`` (after two warm-up batches)."""
    for batch in batches[:2]:
        step(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for batch in batches:
            step(batch)
            done += len(batch[0])
    return done / (time.perf_counter() - started)


def measure_raw(runtime, version_dir: Path, device: str, texts: list[str], features: np.ndarray, seconds: float):
    """Rows/s of the version in process: with tokenization on requests of 64 rows, the network alone on batches
    tokenized before (64 rows, and 256 rows: what a larger ``max_batch_size`` would give); and the probabilities of
    the first rows, as measured and in float32 as training computes them."""
    import torch

    on_gpu = device.startswith("cuda")
    predictor = runtime.Predictor.load(version_dir, device=device, fp16=on_gpu, engine="torch")

    def batches(rows: int) -> list:
        return [(texts[i : i + rows], features[i : i + rows]) for i in range(0, len(texts) - rows + 1, rows)]

    def tensors(batch):
        ids, mask = predictor.text_encoder(batch[0])
        return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (ids, mask, batch[1])]

    figures = {"seq_per_s": rate(lambda batch: predictor.predict_proba(*batch), batches(ROWS), seconds)}
    with torch.inference_mode():
        for rows, name in ((ROWS, "model_only_seq_per_s"), (4 * ROWS, "model_only_256_seq_per_s")):
            tokenized = [tensors(batch) for batch in batches(rows)]
            figures[name] = rate(lambda b: predictor.model(*b).float().softmax(dim=-1).cpu(), tokenized, seconds)
    first = slice(0, 4 * ROWS)
    reference = predictor.predict_proba(texts[first], features[first])
    # On a CPU the measured model already runs in float32.
    fp32 = runtime.Predictor.load(version_dir, device=device, engine="torch") if on_gpu else predictor
    full = fp32.predict_proba(texts[first], features[first])
    return {name: round(value, 1) for name, value in figures.items()}, (reference, full)


# --- the server -------------------------------------------------------------------------------------------------


def instance_count(config: Path) -> int:
    """The instances per device that ``config.pbtxt`` asks for."""
    return int(re.search(r"\bcount: (\d+)", config.read_text(encoding="utf-8")).group(1))


def set_instance_count(config: Path, count: int) -> None:
    text = config.read_text(encoding="utf-8")
    config.write_text(re.sub(r"\bcount: \d+", f"count: {count}", text, count=1), encoding="utf-8")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def python_info(python: Path) -> dict[str, str]:
    code = (
        "import json, sys, sysconfig; print(json.dumps({'version': '%d.%d' % sys.version_info[:2],"
        " 'libdir': sysconfig.get_config_var('LIBDIR'), 'base': sys.base_prefix}))"
    )
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    return json.loads(found.stdout)


def unpack_server(bundle: Path, work: Path) -> tuple[Path, Path]:
    """(the tritonserver folder, its libraries) from the bundle's ``server.tar.xz``."""
    target = work / "server"
    with tarfile.open(bundle / "server.tar.xz") as archive:
        archive.extractall(target, filter="data")
    return target / "tritonserver", target / "libs"


def start_server(
    server: Path, libs: Path, python: Path, repository: Path, work: Path, log
) -> tuple[subprocess.Popen, int, int]:
    """tritonserver as ``driftloop stack up`` starts it (explicit model control), on free ports."""
    info = python_info(python)
    stub = server / "python_backend_stubs" / info["version"] / "triton_python_backend_stub"
    if not stub.is_file():
        raise SystemExit(f"no python backend stub for Python {info['version']} in {server}")
    # The stub links the Python it runs (libpython3.X.so.1.0): a Python built without it cannot serve.
    library = f"libpython{info['version']}.so.1.0"
    places = [info["libdir"], f"{info['base']}/lib", "/usr/lib/x86_64-linux-gnu", "/usr/local/lib"]
    libpython = next((place for place in places if place and Path(place, library).exists()), None)
    if libpython is None:
        raise SystemExit(f"{python} has no {library} in {places}: the python backend stub cannot run it")
    backend = work / "backends" / "python"
    backend.mkdir(parents=True)
    for source in [*sorted((server / "backends" / "python").iterdir()), stub]:
        shutil.copy2(source, backend / source.name)
    http, grpc = free_port(), free_port()
    argv = [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backend.parent}",
        "--model-control-mode=explicit",
        "--strict-readiness=false",
        "--disable-auto-complete-config",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--allow-metrics=false",
        "--log-verbose=0",
        "--exit-timeout-secs=5",  # idle gRPC clients would hold a SIGTERM for 30 s
    ]
    if not Path("/dev/nvidia0").exists():
        argv.append("--pinned-memory-pool-byte-size=0")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the stub runs the serving Python's own packages, not the client's wheels
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), libpython, env.get("LD_LIBRARY_PATH")]))
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    return process, http, grpc


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def http_status(url: str, method: str = "GET", timeout_s: float = 5.0) -> int:
    try:
        request = urllib.request.Request(url, method=method)
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_until(check, what: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not check():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise SystemExit(f"tritonserver: {what} did not happen (exit {process.poll()}); its log ends:\n{tail}")
        time.sleep(0.5)


def served_instances(http: int) -> list[dict]:
    """The instance groups Triton serves the model with (kind, count, GPUs), from its configuration API."""
    url = f"http://127.0.0.1:{http}/v2/models/{MODEL}/config"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
        groups = json.load(response).get("instance_group", [])
    return [{key: group[key] for key in ("kind", "count", "gpus") if key in group} for group in groups]


def load_model(process: subprocess.Popen, http: int, log_path: Path) -> float:
    """Load the version (explicit mode); seconds until it is ready."""
    base = f"http://127.0.0.1:{http}/v2"
    wait_until(lambda: http_status(f"{base}/health/live") == 200, "start", process, log_path)
    started = time.monotonic()
    # The answer comes once the instances are up (torch and CUDA in each stub: many seconds on a GPU).
    status = http_status(f"{base}/repository/models/{MODEL}/load", method="POST", timeout_s=READY_TIMEOUT_S)
    if status != 200:
        raise SystemExit(
            f"tritonserver refused to load {MODEL} ({status}):\n{log_path.read_text(errors='replace')[-4000:]}"
        )
    wait_until(lambda: http_status(f"{base}/models/{MODEL}/versions/{VERSION}/ready") == 200, "load", process, log_path)
    return time.monotonic() - started


# --- clients ----------------------------------------------------------------------------------------------------


def request_inputs(texts: list[str], features: np.ndarray, start: int):
    import tritonclient.grpc.aio as grpcclient

    rows = slice(start, start + ROWS)
    text = grpcclient.InferInput("TEXT", [ROWS, 1], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts[rows]], dtype=np.object_).reshape(ROWS, 1))
    values = grpcclient.InferInput("FEATURES", [ROWS, features.shape[1]], "FP32")
    values.set_data_from_numpy(np.ascontiguousarray(features[rows], dtype=np.float32))
    return [text, values]


async def _client(grpc: int, in_flight: int, texts: list[str], features: np.ndarray, barrier, seconds: float):
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
    requests = [request_inputs(texts, features, start) for start in range(0, len(texts) - ROWS + 1, ROWS)]
    outputs = [grpcclient.InferRequestedOutput("PROBS")]
    await client.infer(MODEL, requests[0], model_version=VERSION, outputs=outputs)  # connection and warm-up
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
    end = time.perf_counter() + seconds
    latencies: list[float] = []

    async def loop(offset: int) -> None:
        index = offset
        while time.perf_counter() < end:
            sent = time.perf_counter()
            await client.infer(MODEL, requests[index % len(requests)], model_version=VERSION, outputs=outputs)
            latencies.append(time.perf_counter() - sent)
            index += in_flight

    started = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(in_flight)))
    elapsed = time.perf_counter() - started
    await client.close()
    return latencies, elapsed


def client_process(grpc: int, in_flight: int, inputs: Path, offset: int, barrier, results, seconds: float) -> None:
    """One load generator, as one inference worker: ``in_flight`` requests of 64 rows kept in flight."""
    data = json.loads(inputs.read_text(encoding="utf-8"))
    texts = data["texts"][offset:] + data["texts"][:offset]
    features = np.roll(np.asarray(data["features"], dtype=np.float32), -offset, axis=0)
    latencies, elapsed = asyncio.run(_client(grpc, in_flight, texts, features, barrier, seconds))
    results.put((latencies, elapsed))


class GpuSampler:
    """Mean GPU utilisation (%) over an interval, from ``torch.cuda.utilization`` (NVML), or None."""

    def __init__(self, device: str) -> None:
        self.device, self.samples, self._stop = device, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.wait(0.2):
            try:
                self.samples.append(float(torch.cuda.utilization(torch.device(self.device))))
            except Exception:  # no NVML: no figure, not a failed run
                return

    def __enter__(self) -> GpuSampler:
        if self.device.startswith("cuda"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def load_point(grpc: int, workers: int, in_flight: int, inputs: Path, seconds: float, device: str) -> dict:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: no gRPC state across a fork
    barrier, results = context.Barrier(workers + 1), context.Queue()
    count = len(json.loads(inputs.read_text(encoding="utf-8"))["texts"])
    processes = [
        context.Process(
            target=client_process, args=(grpc, in_flight, inputs, (i * count) // workers, barrier, results, seconds)
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    barrier.wait(timeout=120)
    with GpuSampler(device) as sampler:
        outcomes = [results.get(timeout=seconds + 120) for _ in processes]
    for process in processes:
        process.join()
    latencies = np.array([value for outcome in outcomes for value in outcome[0]]) * 1000
    elapsed = max(outcome[1] for outcome in outcomes)
    return {
        "workers": workers,
        "in_flight": in_flight,
        "seq_per_s": round(len(latencies) * ROWS / elapsed, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "gpu_util": sampler.mean(),
    }


def triton_probs(grpc: int, texts: list[str], features: np.ndarray, rows: int) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
    probs = []
    for start in range(0, rows, ROWS):
        inputs = request_inputs(texts, features, start)
        probs.append(client.infer(MODEL, inputs, model_version=VERSION).as_numpy("PROBS"))
    client.close()
    return np.concatenate(probs)


def ready_lines(log_path: Path) -> list[str]:
    """What each instance said when it was ready (``model.py``: "ready on cuda:0 (torch fp16)")."""
    return [
        line.split("ready on ", 1)[1].split(";")[0]
        for line in log_path.read_text(errors="replace").splitlines()
        if "ready on " in line
    ]


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    points = result["triton"]
    figure, axis = plt.subplots(figsize=(7, 4))
    for count in sorted({p["instances"] for p in points}):
        line = [p for p in points if p["instances"] == count]
        label = f"through Triton, {count} instance{'s' if count > 1 else ''}"
        axis.plot([p["workers"] for p in line], [p["seq_per_s"] for p in line], marker="o", label=label)
    axis.axhline(result["raw"]["seq_per_s"], color="grey", linestyle="--", label="in process (tokenization included)")
    axis.axhline(result["raw"]["model_only_seq_per_s"], color="grey", linestyle=":", label="in process, network only")
    axis.set_xlabel(f"client processes ({points[0]['in_flight']} requests of {ROWS} rows in flight each)")
    axis.set_ylabel("sequences / s")
    axis.set_ylim(bottom=0)
    axis.set_title(f"{result['encoder']} on {result['device_name']}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path(".gpu"))
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON, the plot and the server's log")
    parser.add_argument(
        "--server", type=Path, default=None, help="an unpacked tritonserver folder (default: the bundle's)"
    )
    parser.add_argument("--server-libs", type=Path, default=None, help="its libraries (with --server)")
    parser.add_argument("--serving-python", type=Path, default=Path(sys.executable), help="the stubs' Python")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measured point")
    parser.add_argument("--workers", default="1,2,4,8,12", help="client processes at each point")
    parser.add_argument("--in-flight", type=int, default=2, help="requests in flight per client (max_in_flight)")
    parser.add_argument(
        "--instances",
        default="",
        help="instance counts per device to measure in turn, e.g. 2,4 (default: the config's)",
    )
    parser.add_argument("--atol", type=float, default=0.02, help="the smoke tolerance (training.smoke_atol)")
    args = parser.parse_args()

    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    out = args.out or Path(tempfile.mkdtemp(prefix="triton-gpu-out-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="triton-gpu-"))
    data = json.loads((args.bundle / "inputs.json").read_text(encoding="utf-8"))
    texts, features = data["texts"], np.asarray(data["features"], dtype=np.float32)

    version_dir = prepare_repository(args.bundle, work, texts, features)
    runtime = load_runtime(version_dir)
    raw, (reference, reference_fp32) = measure_raw(runtime, version_dir, device, texts, features, args.seconds)
    if device != "cpu":
        torch.cuda.empty_cache()  # the in-process model is gone: its memory goes back to the server's instances

    server, libs = (args.server, args.server_libs) if args.server else unpack_server(args.bundle, work)
    log_path = out / "tritonserver.log"
    config = work / "repo" / MODEL / "config.pbtxt"
    counts = [int(c) for c in args.instances.split(",")] if args.instances else [instance_count(config)]
    points: list[dict] = []
    load_s: dict[int, float] = {}
    groups: dict[int, list[dict]] = {}
    with log_path.open("wb") as log:
        process, http, grpc = start_server(server, libs, args.serving_python, work / "repo", work, log)
        try:
            for count in counts:
                set_instance_count(config, count)
                # A new count: Triton reloads the version, or adds and removes instances in place.
                load_s[count] = round(load_model(process, http, log_path), 1)
                groups[count] = served_instances(http)
                if any(group["count"] != count for group in groups[count]):
                    raise SystemExit(f"asked for {count} instances per device, Triton serves {groups[count]}")
                if not points:
                    served = triton_probs(grpc, texts, features, len(reference))
                points += [
                    {"instances": count}
                    | load_point(grpc, int(w), args.in_flight, args.bundle / "inputs.json", args.seconds, device)
                    for w in args.workers.split(",")
                ]
        except BaseException:
            # One run must still tell what it measured, and why the rest failed.
            print(json.dumps({"benchmark": "triton_gpu", "device": device, "raw": raw, "triton": points}))
            raise
        finally:
            stop(process)
    best = max(points, key=lambda p: p["seq_per_s"])
    diff = float(np.abs(served - reference).max())
    diff_fp32 = float(np.abs(served - reference_fp32).max())
    metadata = runtime.read_metadata(version_dir)
    result = {
        "benchmark": "triton_gpu",
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device != "cpu" else "CPU",
        "encoder": metadata.get("encoder", {}).get("kind", "?"),
        "max_seq_len": metadata["max_seq_len"],
        "torch": torch.__version__,
        "ready": ready_lines(log_path),
        "load_s": load_s,
        "instance_groups": groups,
        "raw": raw,
        "triton": points,
        "best": best,
        "ratio": round(best["seq_per_s"] / raw["seq_per_s"], 3),
        "ratio_model_only": round(best["seq_per_s"] / raw["model_only_seq_per_s"], 3),
        "max_abs_diff": diff,
        "max_abs_diff_fp32": diff_fp32,
        "atol": args.atol,
        "probs_std": round(float(reference_fp32.std(axis=0).mean()), 3),
    }
    line = json.dumps(result)
    print(line)
    (out / "triton_gpu.json").write_text(line + "\n", encoding="utf-8")
    plot(result, out / "triton_gpu.png")
    shutil.rmtree(work, ignore_errors=True)
    if not max(diff, diff_fp32) <= args.atol:
        raise SystemExit(f"Triton's probabilities differ from the process's by {max(diff, diff_fp32)} (> {args.atol})")


if __name__ == "__main__":
    main()
