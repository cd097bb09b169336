#!/usr/bin/env python3
"""One command for every GPU check of issue 11: correctness and speed, roberta-train against
PyTorch on the same card, written to gpu_check.json and gpu_check.md.

Build here (no GPU, no CUDA toolkit needed; the driver and NVRTC are loaded at run time, and
cudarc's CUDA version is fixed at build time, so build for the H200's driver, CUDA 13.0):

    CUDARC_CUDA_VERSION=13000 cargo build --profile gpu --features cuda
    CUDARC_CUDA_VERSION=13000 cargo test --profile gpu -p roberta-model \
        --features roberta-model/cuda --test parity --no-run      # prints the test binary's path

(`gpu` is the release profile without debug info, stripped.) Put into the ignored folder
`.gpu/` (the device call carries 64 MiB in all, the working tree ~5 MB included, so compress
the binaries; this script unpacks `.xz`/`.gz` itself):

    mkdir -p .gpu/tokenizer
    xz -T0 -9 -c target/gpu/roberta-train > .gpu/roberta-train.xz
    xz -T0 -9 -c "$(ls -t target/gpu/deps/parity-* | grep -v '\.d$' | head -1)" > .gpu/parity.xz
    cp ../shared/data/roberta_base_tokenizer/tokenizer.json .gpu/tokenizer/   # vocab 50,265
    du -sh .gpu     # must leave room for the working tree (~5 MB) under 64 MiB

The one device command (carry [".gpu"], timeout_s 600; the default budget ends it in ~540 s):

    python3 scripts/gpu_check.py --bin .gpu/roberta-train.xz --parity .gpu/parity.xz --tokenizer .gpu/tokenizer --device cuda:0 --out $OUT

A second call can rerun a part: --skip parity,losses,profile; --precisions bf16 --seqs 512
--batches '512:96,64'; --systems roberta-train; --warmup/--updates; --budget-s.

Dry run on the CPU (tiny model, few updates; about 2 minutes on 2 cores):

    python3 scripts/gpu_check.py --bin target/release/roberta-train --parity <parity test binary> \
        --tokenizer ../shared/data/roberta_base_tokenizer --device cpu --tiny --out /tmp/gpu_dry

What it does, each step under its own timeout, a failure recorded as a row with "error":
 1. Correctness rows {"check", "device", "max_abs_diff"|"max_rel_diff", "tolerance", "pass"}:
    a. the HF parity tests of the device's module (cuda::, or flex:: on cpu), one row per test;
    b. a tiny model (data/default-corpus, data/tokenizer) made by 2 updates on cpu (burn's
       random generators differ per backend), then continued for 6 updates with dropout 0 on
       the device and on cpu: per-update losses agree within 1e-3 relative;
    c. the same on the device in bf16 against fp32: within 1%.
 2. Profile (JSON "profile"): one roberta-base update at seq 512 in bf16 (fp32 on cpu) by
    phase (log.profile_every = 1: data, forward, backward, all-reduce, norm and read,
    optimizer, each ended by a device synchronisation) and, on cubecl backends, by kernel
    (cubecl's profiler through a cubecl.toml: count and time per kernel, grouped into
    matmul, attention, reduce, copy/cast, fused elementwise, random, other); three runs of
    at most --profile-timeout (default 90) s each.
 3. Speed rows {"system", "device", "precision", "seq_len", "batch", "tokens_per_s", "mfu",
    "peak_mem_gib", "updates", ...} at roberta-base geometry (tiny with --tiny): roberta-train,
    and transformers' RobertaForMaskedLM with the full head and with a masked-only head, for each
    (precision, seq, batch); the ratios roberta-train / PyTorch per configuration.
 4. gpu_check.json {"machine": {...}, "rows": [...], "ratios": [...], "profile": {...}} and
    gpu_check.md, rewritten
    after every row (a killed call still leaves what was measured); logs under OUT/logs/.
--budget-s (default 540) skips the remaining speed rows (recorded as skipped) when time runs
short. Python 3 stdlib in the main process; torch/transformers only in a worker subprocess.
"""

import argparse
import datetime
import glob
import gzip
import hashlib
import json
import lzma
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = time.time()

# --- FLOPs and MFU -----------------------------------------------------------------------------
# Model FLOPs per token (PaLM appendix B / Chinchilla style; forward + backward = 3 × forward,
# a multiply-add = 2 FLOPs):
#     6·N + 12·L·H·S + 6·(H² + H·V)·m
# N = the encoder's non-embedding parameters, L·(4H² + 2H·F + 9H + F) (Q, K, V, output,
# FFN in and out with their biases, two LayerNorms); 12·L·H·S = the attention scores QKᵀ and
# the weighted sum of V (2·2·S·H per layer and token forward, ×3); the MLM head (dense H×H and
# the decoder H×V) on the masked tokens only, m = 0.15 of the tokens. The same formula for every
# system, so MFU is proportional to tokens/s: the full-head PyTorch run computes the decoder on
# all tokens, but 85% of that is thrown away and not counted as useful work.
# Peaks (--peak-bf16/--peak-fp32; on cuda these defaults, on cpu none, so MFU is null):
#   bf16: 790e12, the H200's measured dense bf16 matmul rate (datasheet 989e12);
#   fp32: 60e12, the achievable fp32 rate without tensor cores (datasheet 67e12), since PyTorch
#   runs fp32 without TF32 by default (kept so here, --torch-tf32 turns it on). If burn's
#   autotune picks TF32 tensor-core kernels for f32, roberta-train's fp32 MFU overstates.
H200_PEAK_BF16 = 790e12
H200_PEAK_FP32 = 60e12
MASK_FRACTION = 0.15


def flops_per_token(g, seq_len):
    h, layers, ffn, vocab = g["hidden"], g["layers"], g["ffn"], g["vocab"]
    n = layers * (4 * h * h + 2 * h * ffn + 9 * h + ffn)
    return 6 * n + 12 * layers * h * seq_len + 6 * (h * h + h * vocab) * MASK_FRACTION


FLOP_FORMULA = ("FLOPs/token = 6·N + 12·L·H·S + 6·(H² + H·V)·0.15, N = L·(4H² + 2H·F + 9H + F) "
                "(non-embedding encoder parameters), the MLM head counted on the 15% masked "
                "tokens only, for every system")

# Correctness tolerances.
PARITY_TOLERANCE = 1e-4  # what the parity tests assert (crates/roberta-model/tests/parity.rs)
# Per-update losses, device fp32 against cpu fp32, same initial weights and masks, dropout 0.
# Not bitwise: GPU kernels reduce in other orders (tiled matmuls, tree reductions in softmax,
# LayerNorm and the loss, atomics), and autotune may choose kernels that accumulate in other
# orders again; those fp32 rounding differences (~1e-7 relative per op) grow through the
# updates of AdamW at a 2-layer model's learning rate. Losses that agree to 1e-3 relative
# after 6 updates mean the same computation; a wrong kernel (a missing scale, a dropped bias,
# the tanh-GELU derivative) moves them by 1e-2 or more. lavapipe vs cpu measured 1.5e-7.
LOSS_TOLERANCE = 1e-3
BF16_TOLERANCE = 1e-2  # bf16 over fp32 master weights tracks fp32 within 1% (issue 11)


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


# --- results ----------------------------------------------------------------------------------
class Results:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.machine = {}
        self.rows = []
        self.ratios = []
        self.profile = None

    def add(self, row):
        self.rows.append(row)
        log("row " + json.dumps(row))
        self.write()

    def write(self):
        self.ratios = ratios(self.rows)
        doc = {"machine": self.machine, "flop_formula": FLOP_FORMULA, "rows": self.rows,
               "ratios": self.ratios, "profile": self.profile}
        path = os.path.join(self.out_dir, "gpu_check.json")
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(path + ".tmp", path)
        with open(os.path.join(self.out_dir, "gpu_check.md"), "w", encoding="utf-8") as f:
            f.write(markdown(doc))


def ratios(rows):
    """roberta-train's tokens/s over PyTorch's, per (precision, seq, batch); also per position
    (roberta-train's tokens/s over its block fill: the padded positions it computed on, as
    PyTorch's full random batches)."""
    speed = {}
    for r in rows:
        if "system" in r and r.get("tokens_per_s"):
            speed[(r["precision"], r["seq_len"], r["batch"], r["system"])] = r
    out = []
    for (prec, seq, batch, system), r in speed.items():
        if system != "roberta-train":
            continue
        q = {"precision": prec, "seq_len": seq, "batch": batch}
        for head in ("masked", "full"):
            other = speed.get((prec, seq, batch, f"pytorch-{head}-head"))
            q[f"vs_pytorch_{head}_head"] = (round(r["tokens_per_s"] / other["tokens_per_s"], 3)
                                            if other else None)
        other = speed.get((prec, seq, batch, "pytorch-masked-head"))
        q["vs_pytorch_masked_head_per_position"] = (
            round(r["positions_per_s"] / other["tokens_per_s"], 3)
            if other and r.get("positions_per_s") else None)
        out.append(q)
    return out


def fmt(v, kind=None):
    if v is None:
        return "–"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if isinstance(v, bool):
        return "yes" if v else "**NO**"
    if isinstance(v, float):
        if kind == "int":
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def markdown(doc):
    m = doc["machine"]
    lines = [f"# GPU check: {m.get('gpu', '?')}", ""]
    def peaks(p):
        return ", ".join(f"{k} {v / 1e12:g} TFLOP/s" if v else f"{k} none"
                         for k, v in (p or {}).items())

    for k in ("gpu", "driver", "cuda", "nvcc", "hostname", "date", "roberta_train", "burn",
              "torch", "transformers", "torch_device_name", "git", "measured_matmul_tflops",
              "tiny", "peaks", "phase_s", "wall_s"):
        if k == "peaks" and k in m:
            lines.append(f"- peaks for MFU: {peaks(m[k])}")
        elif k in m:
            lines.append(f"- {k}: {json.dumps(m[k]) if isinstance(m[k], (dict, list)) else m[k]}")
    lines += ["", "## Correctness", "",
              "| check | device | max diff | tolerance | pass | note |", "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if "check" not in r:
            continue
        diff = r.get("max_abs_diff", r.get("max_rel_diff"))
        kind = "abs" if "max_abs_diff" in r else "rel" if "max_rel_diff" in r else ""
        d = f"{diff:.3g} ({kind})" if isinstance(diff, (int, float)) else "–"
        note = r.get("error") or r.get("note") or ""
        lines.append(f"| {r['check']} | {r.get('device', '')} | {d} | {fmt(r.get('tolerance'))} "
                     f"| {fmt(r.get('pass'))} | {note[:160].replace('|', '/')} |")
    lines += ["", "## Speed", "",
              "| system | device | precision | seq | batch | tokens/s | MFU | peak GiB | GPU busy "
              "| updates | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if "system" not in r:
            continue
        note = r.get("error") or (("skipped: " + r["skipped"]) if r.get("skipped") else "") \
            or r.get("note", "")
        busy = r.get("gpu_busy_pct")
        lines.append(
            f"| {r['system']} | {r.get('device', '')} | {r['precision']} | {r['seq_len']} "
            f"| {r['batch']} | {fmt(r.get('tokens_per_s'), 'int')} | {fmt(r.get('mfu'), 'pct')} "
            f"| {fmt(r.get('peak_mem_gib'))} | {'–' if busy is None else f'{busy:.0f}%'} "
            f"| {fmt(r.get('updates'))} | {note[:160].replace('|', '/')} |")
    lines += ["", "## roberta-train / PyTorch (tokens/s)", "",
              "| precision | seq | batch | vs masked head | vs full head "
              "| vs masked head, per position |", "|---|---|---|---|---|---|"]
    for q in doc["ratios"]:
        lines.append(f"| {q['precision']} | {q['seq_len']} | {q['batch']} "
                     f"| {fmt(q['vs_pytorch_masked_head'])} | {fmt(q['vs_pytorch_full_head'])} "
                     f"| {fmt(q['vs_pytorch_masked_head_per_position'])} |")
    lines += profile_markdown(doc.get("profile"))
    lines += ["", f"MFU: {doc['flop_formula']}; peaks: {peaks(m.get('peaks'))}.",
              "roberta-train's tokens/s counts non-padding tokens (`fill` in the JSON: the "
              "corpus's mean block fill; per position = tokens/s ÷ fill, ≈ the positions it "
              "computed on); PyTorch's random batches are full. Peak memory: roberta-train, "
              "nvidia-smi's used memory above the level before the run (its pool, CUDA context "
              "included); PyTorch, torch.cuda.max_memory_allocated (reserved in the JSON). GPU "
              "busy: nvidia-smi utilization.gpu averaged over the measured updates (100% minus "
              "it: the share of time the GPU waited on the host).", ""]
    return "\n".join(lines)


# --- processes ---------------------------------------------------------------------------------
def kill_group(proc):
    """Kills the process group of a child this script started (start_new_session=True)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def run_cmd(cmd, timeout, env=None, log_path=None, cwd=None):
    """Runs cmd to completion or timeout; returns (rc or None on timeout, output text)."""
    out = (open(log_path, "w+", encoding="utf-8", errors="replace") if log_path
           else tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace"))
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True, text=True)
        try:
            rc = proc.wait(timeout=max(1, timeout))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc = None
        out.seek(0)
        return rc, out.read()
    finally:
        out.close()


def quick(cmd, timeout=20):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.stdout.strip() if p.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def tail(text, n=600):
    text = (text or "").strip()
    return text[-n:]


def error_summary(text):
    """The most telling line of a failed run's output: an error or panic message."""
    lines = [l.strip() for l in (text or "").splitlines() if l.strip()]
    for pat in ("Error:", "error:", "panicked", "Caused by", "ERROR"):
        hits = [i for i, l in enumerate(lines) if pat in l]
        if hits:
            i = hits[0]
            return " ".join(lines[i:i + 3])[:400]
    return " ".join(lines[-3:])[:400]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpack(path, work):
    """A binary given as .xz/.gz is unpacked into work/bin; returns an executable path."""
    path = os.path.abspath(path)
    opener = lzma.open if path.endswith(".xz") else gzip.open if path.endswith(".gz") else None
    if opener is None:
        return path
    os.makedirs(os.path.join(work, "bin"), exist_ok=True)
    dest = os.path.join(work, "bin", os.path.basename(path).rsplit(".", 1)[0])
    with opener(path, "rb") as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.chmod(dest, 0o755)
    return dest


def cuda_env():
    """The environment for the Rust binaries: cudarc loads libcuda and libnvrtc at run time, and
    NVRTC wants the CUDA headers (CUDA_PATH, else /usr/local/cuda). Where the system has no
    libnvrtc, fall back to the one in PyTorch's wheels (nvidia/*/lib)."""
    env = dict(os.environ)
    notes = {}
    if not env.get("CUDA_PATH") and not os.path.isdir("/usr/local/cuda"):
        found = sorted(glob.glob("/usr/local/cuda-*"))
        if found:
            env["CUDA_PATH"] = found[-1]
    notes["cuda_path"] = env.get("CUDA_PATH") or ("/usr/local/cuda" if os.path.isdir(
        "/usr/local/cuda") else None)
    ldconfig = quick(["ldconfig", "-p"]) or ""
    nvrtc = [l.split("=>")[-1].strip() for l in ldconfig.splitlines() if "libnvrtc.so" in l]
    if not nvrtc and notes["cuda_path"]:
        nvrtc = glob.glob(os.path.join(notes["cuda_path"], "lib*", "libnvrtc.so*"))
        if nvrtc:
            env["LD_LIBRARY_PATH"] = os.path.dirname(nvrtc[0]) + ":" + env.get(
                "LD_LIBRARY_PATH", "")
    if not nvrtc:
        import site
        dirs = site.getsitepackages() + [site.getusersitepackages()]
        for d in dirs:
            hits = glob.glob(os.path.join(d, "nvidia", "**", "libnvrtc.so*"), recursive=True)
            if hits:
                nvrtc = hits
                env["LD_LIBRARY_PATH"] = os.path.dirname(hits[0]) + ":" + env.get(
                    "LD_LIBRARY_PATH", "")
                break
    notes["libnvrtc"] = sorted(set(nvrtc))[:3]
    return env, notes


# --- GPU monitor -------------------------------------------------------------------------------
class GpuMonitor:
    """nvidia-smi's used memory and utilization every 100 ms, in a thread; the samples between
    two times give a run's peak memory and busy share. Absent on cpu: everything is None."""

    def __init__(self, index):
        self.samples = []
        self.proc = None
        if index is None or not shutil.which("nvidia-smi"):
            return
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used,utilization.gpu",
                 "--format=csv,noheader,nounits", "-i", str(index), "-lms", "100"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                start_new_session=True)
        except OSError:
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                self.samples.append((time.time(), float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                pass

    def peak_gib(self, t0, t1):
        """The peak of used memory between t0 and t1 above the lowest level from a second
        before t0 to t1 (the GPU before the run's process took any: a killed predecessor's
        memory may still be on its way out at t0)."""
        around = [s[1] for s in self.samples if t0 - 1 <= s[0] <= t1]
        inside = [s[1] for s in self.samples if t0 <= s[0] <= t1]
        if not around or not inside:
            return None
        return round((max(inside) - min(around)) / 1024, 2)

    def busy_pct(self, t0, t1):
        inside = [s[2] for s in self.samples if t0 <= s[0] <= t1]
        return round(sum(inside) / len(inside), 1) if inside else None

    def stop(self):
        if self.proc:
            kill_group(self.proc)


# --- roberta-train -----------------------------------------------------------------------------
def toml_str(s):
    return json.dumps(str(s))


def tiny_correctness_config(data_dir, tokenizer, init=None):
    """A quickstart-like tiny model on the embedded corpus; with init, continued from that HF
    directory (the architecture comes from it)."""
    shape = ('preset = "tiny"\nhidden_size = 128\nnum_hidden_layers = 2\n'
             'num_attention_heads = 4\nintermediate_size = 512\n')
    model = f"init = {toml_str(init)}\n" if init else shape
    return f"""[model]
{model}hidden_dropout_prob = 0.0
attention_probs_dropout_prob = 0.0

[data]
train = [{toml_str(data_dir)}]
data_dir = {toml_str(data_dir)}
tokenizer = {toml_str(tokenizer)}
block_size = 64
break_mode = "full-sentences"

[optim]
lr = 3e-3
clip_norm = 1.0

[schedule]
warmup_steps = 2
total_steps = 6

[train]
batch_size = 32
accumulation = 1
seed = 0

[checkpoint]
every = 0
keep = 1

[log]
every = 1

[eval]
every = 1000
batches = 1
"""


def speed_config(g, data_dir, tokenizer, seq, batch, precision, warmup, updates):
    total = warmup + updates
    return f"""# generated by scripts/gpu_check.py: roberta-base's recipe (configs/roberta-base.toml)
[model]
preset = "roberta-base"
hidden_size = {g['hidden']}
num_hidden_layers = {g['layers']}
num_attention_heads = {g['heads']}
intermediate_size = {g['ffn']}
hidden_dropout_prob = 0.1
attention_probs_dropout_prob = 0.1

[data]
train = [{toml_str(data_dir)}]
data_dir = {toml_str(data_dir)}
tokenizer = {toml_str(tokenizer)}
block_size = {seq}
break_mode = "full-sentences"

[masking]
mask_prob = {MASK_FRACTION}
mask_token_prob = 0.8
random_token_prob = 0.1

[optim]
lr = 6e-4
beta1 = 0.9
beta2 = 0.98
eps = 1e-6
weight_decay = 0.01
clip_norm = 0.0

[schedule]
warmup_steps = {min(warmup, total)}
total_steps = {total}

[train]
batch_size = {batch}
accumulation = 1
seed = 0
precision = "{precision}"

[checkpoint]
every = 0
keep = 1

[log]
every = 1

[eval]
every = {total}
batches = 1
"""


class Ctx:
    """What every step needs: paths, the environment, the results, the budget."""

    def __init__(self, args, work, results, monitor, env):
        self.args = args
        self.work = work
        self.results = results
        self.monitor = monitor
        self.env = env
        self.logs = os.path.join(args.out, "logs")
        os.makedirs(self.logs, exist_ok=True)

    def remaining(self):
        return self.args.budget_s - (time.time() - T0)

    def cap(self, timeout):
        """A correctness step's timeout, within what is left of the budget (at least 10 s)."""
        return max(10.0, min(timeout, self.remaining()))


def pretrain(ctx, name, config_text, device, timeout, sets=(), stop_at=None, mark_step=None,
             cwd=REPO, env=None):
    """Runs `roberta-train pretrain` in a fresh run directory. Watches metrics.jsonl; with
    stop_at, kills the run once the line of that update is written (skipping the final
    evaluation and the checkpoint of a large model). Returns a dict: ok, lines (each with the
    time it was seen), t_mark (when the line of update mark_step was seen), t_start, error."""
    base, n = name, 1
    while os.path.exists(os.path.join(ctx.logs, name)):  # a fresh run directory every time
        n += 1
        name = f"{base}-{n}"
    run_dir = os.path.join(ctx.work, "runs", name)
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    cfg = os.path.join(ctx.work, "configs", name + ".toml")
    os.makedirs(os.path.dirname(cfg), exist_ok=True)
    with open(cfg, "w", encoding="utf-8") as f:
        f.write(config_text)
    log_dir = os.path.join(ctx.logs, name)
    os.makedirs(log_dir)
    shutil.copy(cfg, os.path.join(log_dir, "config.toml"))
    cmd = [ctx.args.bin, "pretrain", "--config", cfg, "--device", device, "--run-dir", run_dir]
    for s in sets:
        cmd += ["--set", s]
    out_path = os.path.join(log_dir, "output.txt")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    res = {"ok": False, "lines": [], "t_mark": None, "error": None}
    log(f"{name}: {' '.join(cmd[1:])}")
    with open(out_path, "w") as out:
        t_start = time.time()
        res["t_start"] = t_start
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or ctx.env,
                                start_new_session=True, cwd=cwd)
        pos, pending, killed = 0, b"", False
        while True:
            rc = proc.poll()
            if os.path.exists(metrics):
                with open(metrics, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos += len(chunk)
                pending += chunk
                *complete, pending = pending.split(b"\n")
                now = time.time()
                for l in complete:
                    if l.strip():
                        d = json.loads(l)
                        d["_t"] = now
                        res["lines"].append(d)
                        if mark_step is not None and d.get("step") == mark_step:
                            res["t_mark"] = now
            last = res["lines"][-1]["step"] if res["lines"] else 0
            if stop_at is not None and last >= stop_at:
                kill_group(proc)
                killed = True
                res["ok"] = True
                break
            if rc is not None:
                res["ok"] = rc == 0
                break
            if time.time() - t_start > timeout:
                kill_group(proc)
                res["error"] = f"timeout after {timeout:.0f} s at update {last}"
                break
            time.sleep(0.05)
    res["t_end"] = res["lines"][-1]["_t"] if res["lines"] else time.time()
    with open(out_path, encoding="utf-8", errors="replace") as f:
        output = f.read()
    if not res["ok"] and not res["error"]:
        res["error"] = f"exit {proc.returncode}: {error_summary(output)}"
    for fname in ("train.log", "metrics.jsonl"):
        p = os.path.join(run_dir, fname)
        if os.path.exists(p):
            shutil.copy(p, os.path.join(log_dir, fname))
    res["fill"] = None
    p = os.path.join(run_dir, "train.log")
    text = open(p, encoding="utf-8", errors="replace").read() if os.path.exists(p) else output
    m = re.search(r"train blocks of ≤\d+ tokens \((\d+)% fill\)", text)
    if m:
        res["fill"] = int(m.group(1)) / 100
    res["run_dir"] = run_dir
    log(f"{name}: {'ok' if res['ok'] else res['error']} ({time.time() - t_start:.1f} s, "
        f"{len(res['lines'])} lines{', stopped after the last one' if killed else ''})")
    return res


def preprocess(ctx, name, tokenizer, timeout):
    out = os.path.join(ctx.work, name)
    cmd = [ctx.args.bin, "preprocess", "--input",
           os.path.join(REPO, "data/default-corpus/train.txt"), "--valid",
           os.path.join(REPO, "data/default-corpus/valid.txt"), "--tokenizer", tokenizer,
           "--out", out]
    log(f"preprocess {name}")
    rc, text = run_cmd(cmd, timeout, env=ctx.env,
                       log_path=os.path.join(ctx.logs, f"preprocess-{name}.txt"))
    if rc != 0:
        raise RuntimeError(f"preprocess {name}: "
                           f"{'timeout' if rc is None else f'exit {rc}'}: {error_summary(text)}")
    return out


# --- 1a. parity --------------------------------------------------------------------------------
def parity_module(device):
    return "cuda" if device.startswith("cuda") else "wgpu" if device.startswith("wgpu") else "flex"


def check_parity(ctx):
    module = parity_module(ctx.args.device)
    env = dict(ctx.env)
    env["ROBERTA_FIXTURES"] = os.path.join(REPO, "crates/roberta-model/tests/fixtures")
    rc, listing = run_cmd([ctx.args.parity, f"{module}::", "--list"], 30, env=env)
    names = [l.split(": test")[0] for l in (listing or "").splitlines() if l.endswith(": test")]
    cmd = [ctx.args.parity, f"{module}::", "--test-threads", "1", "--nocapture"]
    log("parity: " + " ".join(cmd[1:]))
    rc, text = run_cmd(cmd, ctx.cap(ctx.args.parity_timeout), env=env,
                       log_path=os.path.join(ctx.logs, "parity.txt"))
    # `test NAME ... <eprintln lines> ok|FAILED`, one test after another (--test-threads 1);
    # under --nocapture a failing test's panic message is among its own lines.
    tests, current = {n: {"diffs": [], "status": None, "text": []} for n in names}, None
    for line in text.splitlines():
        m = re.match(r"test (\S+) \.\.\. ?(.*)$", line)
        if m:
            current = m.group(1)
            tests[current] = {"diffs": [], "status": "started", "text": []}
            line = m.group(2)
        if current is None:
            continue
        tests[current]["text"].append(line)
        for d in re.findall(r"max abs diff ([0-9.eE+-]+|NaN|-?inf)", line):
            tests[current]["diffs"].append(float(d))
        s = line.strip()
        if s.endswith(" ok") or s in ("ok", "FAILED", "ignored") or s.endswith(" FAILED"):
            tests[current]["status"] = s.split()[-1]
            current = None
    if not tests:
        why = ("timeout" if rc is None else f"exit {rc}") + ": " + error_summary(text)
        if rc == 0:
            why = f"no test matched {module}:: (a parity binary built without that backend?)"
        ctx.results.add({"check": f"parity {module}::", "device": ctx.args.device, "pass": False,
                         "error": why})
        return
    died = "timeout" if rc is None else f"exit {rc}"
    for name, t in tests.items():
        finite = [d for d in t["diffs"] if d == d and abs(d) != float("inf")]
        row = {"check": f"parity {name}", "device": ctx.args.device,
               "max_abs_diff": max(finite) if finite else None, "tolerance": PARITY_TOLERANCE,
               "pass": t["status"] == "ok"}
        if len(finite) != len(t["diffs"]):
            row["note"] = "a non-finite difference"
        if t["status"] is None:
            row["error"] = f"not run: the test binary ended first ({died})"
        elif t["status"] == "started":
            row["error"] = f"did not finish ({died}): " + error_summary("\n".join(t["text"]))
        elif t["status"] != "ok":
            row["error"] = error_summary("\n".join(t["text"]))
        ctx.results.add(row)


# --- 1b/1c. losses -----------------------------------------------------------------------------
def max_rel_diff(a, b):
    """None when a loss is missing or not finite (metrics.jsonl writes NaN as null)."""
    pairs = list(zip(a, b))
    if any(not isinstance(v, (int, float)) or v != v or abs(v) == float("inf")
           for pair in pairs for v in pair):
        return None
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in pairs)


def losses_of(res):
    return [l.get("loss") for l in res["lines"]]


def check_losses(ctx):
    dev = ctx.args.device
    tok = os.path.join(REPO, "data/tokenizer")
    t = ctx.args.correctness_timeout
    name_l = f"losses {dev} vs cpu (fp32, 6 updates)"
    name_b = f"losses bf16 vs fp32 on {dev} (6 updates)"
    try:
        data = preprocess(ctx, "data-tiny", tok, ctx.cap(120))
        start = pretrain(ctx, "tiny-start", tiny_correctness_config(data, tok), "cpu", ctx.cap(t),
                         sets=["schedule.total_steps=2"])
        if not start["ok"]:
            raise RuntimeError("the starting run on cpu: " + start["error"])
        init = os.path.join(start["run_dir"], "final")
        cfg = tiny_correctness_config(data, tok, init=init)
    except Exception as e:  # noqa: BLE001 - recorded, the other checks go on
        for name in (name_l, name_b):
            ctx.results.add({"check": name, "device": dev, "pass": False, "error": str(e)[:500]})
        return
    on_dev = pretrain(ctx, "tiny-device-fp32", cfg, dev, ctx.cap(t))
    on_cpu = pretrain(ctx, "tiny-cpu-fp32", cfg, "cpu", ctx.cap(t))
    row = {"check": name_l, "device": dev}
    if on_dev["ok"] and on_cpu["ok"] and len(on_dev["lines"]) == len(on_cpu["lines"]) > 0:
        a, b = losses_of(on_dev), losses_of(on_cpu)
        d = max_rel_diff(a, b)
        row.update(max_rel_diff=d, tolerance=LOSS_TOLERANCE,
                   pass_=d is not None and d <= LOSS_TOLERANCE, losses={"device": a, "cpu": b})
        if d is None:
            row["error"] = "a loss is not finite"
    else:
        row.update(pass_=False, error=on_dev["error"] or on_cpu["error"]
                   or "different numbers of updates")
    row["pass"] = row.pop("pass_")
    ctx.results.add(row)
    bf = pretrain(ctx, "tiny-device-bf16", cfg, dev, ctx.cap(t), sets=["train.precision=bf16"])
    row = {"check": name_b, "device": dev}
    if bf["ok"] and on_dev["ok"] and len(bf["lines"]) == len(on_dev["lines"]) > 0:
        a, b = losses_of(bf), losses_of(on_dev)
        d = max_rel_diff(a, b)
        row.update(max_rel_diff=d, tolerance=BF16_TOLERANCE,
                   pass_=d is not None and d <= BF16_TOLERANCE, losses={"bf16": a, "fp32": b})
        if d is None:
            row["error"] = "a loss is not finite"
    else:
        row.update(pass_=False, error=bf["error"] or on_dev["error"] or "no fp32 run to compare")
    row["pass"] = row.pop("pass_")
    ctx.results.add(row)


# --- 2. speed ----------------------------------------------------------------------------------
def mfu(ctx, tps, g, seq, precision):
    peak = ctx.args.peak_bf16 if precision == "bf16" else ctx.args.peak_fp32
    if tps is None or not peak:
        return None
    return round(tps * flops_per_token(g, seq) / peak, 4)


def harmonic(values):
    values = [v for v in values if v and v > 0]
    return len(values) / sum(1 / v for v in values) if values else None


def speed_roberta_train(ctx, g, data_dir, seq, batch, precision, timeout):
    a = ctx.args
    name = f"speed-rt-{precision}-s{seq}-b{batch}"
    row = {"system": "roberta-train", "device": a.device, "precision": precision,
           "seq_len": seq, "batch": batch}
    cfg = speed_config(g, data_dir, a.tokenizer, seq, batch, precision, a.warmup, a.updates)
    res = pretrain(ctx, name, cfg, a.device, timeout, stop_at=a.warmup + a.updates,
                   mark_step=a.warmup)
    measured = [l for l in res["lines"] if l["step"] > a.warmup]
    if measured and (res["ok"] or len(measured) >= 3):
        rates = [l["tokens_per_s"] for l in measured]
        tps = harmonic(rates)
        t0 = res["t_mark"] or res["t_start"]
        row.update(tokens_per_s=round(tps, 1), mfu=mfu(ctx, tps, g, seq, precision),
                   peak_mem_gib=ctx.monitor.peak_gib(res["t_start"], res["t_end"]),
                   updates=len(measured),
                   tokens_per_s_median=round(sorted(rates)[len(rates) // 2], 1),
                   gpu_busy_pct=ctx.monitor.busy_pct(t0, res["t_end"]), fill=res["fill"],
                   positions_per_s=round(tps / res["fill"], 1) if res["fill"] else None,
                   warmup_tokens_per_s=[round(l["tokens_per_s"], 1) for l in res["lines"]
                                        if l["step"] <= a.warmup],
                   seconds_to_first_update=round(res["lines"][0]["_t"] - res["t_start"], 1))
        if not res["ok"]:
            row["note"] = "partial: " + res["error"]
    else:
        row.update(tokens_per_s=None, mfu=None, peak_mem_gib=None, updates=len(measured),
                   error=res["error"] or "no measured updates")
    ctx.results.add(row)


class TorchWorker:
    """This script in --torch-worker mode: imports torch and transformers once, then runs one
    JSON job per stdin line and answers with one `@@RESULT {json}` line. A job past its timeout
    kills the worker (its process group); the next job starts a new one."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.proc = None
        self.lines = None

    def _start(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        err = open(os.path.join(self.ctx.logs, "torch_worker.txt"), "a")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--torch-worker",
             "--device", self.ctx.args.device] + (["--torch-tf32"] if self.ctx.args.torch_tf32
                                                   else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
            start_new_session=True)
        self.lines = queue.Queue()
        proc, lines = self.proc, self.lines

        def read():
            for line in proc.stdout:
                if line.startswith("@@RESULT "):
                    lines.put(json.loads(line[len("@@RESULT "):]))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()

    def run(self, job, timeout):
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            result = self.lines.get(timeout=max(1, timeout))
        except queue.Empty:
            self.close()
            return {"error": f"timeout after {timeout:.0f} s"}
        except (BrokenPipeError, OSError) as e:
            self.close()
            return {"error": f"worker: {e}"}
        if result is None:
            self.close()
            return {"error": "the torch worker died (see logs/torch_worker.txt)"}
        return result

    def close(self):
        if self.proc:
            kill_group(self.proc)
            self.proc = None


def speed_pytorch(ctx, worker, g, seq, batch, precision, head, timeout):
    a = ctx.args
    system = f"pytorch-{head}-head"
    row = {"system": system, "device": a.device, "precision": precision, "seq_len": seq,
           "batch": batch}
    log(f"{system} {precision} seq {seq} batch {batch}")
    t_start = time.time()
    r = worker.run({"kind": "speed", "head": head, "precision": precision, "seq": seq,
                    "batch": batch, "warmup": a.warmup, "updates": a.updates, "geometry": g},
                   timeout)
    if "error" in r:
        row.update(tokens_per_s=None, mfu=None, peak_mem_gib=None, updates=None,
                   error=r["error"])
    else:
        tps = r["tokens_per_s"]
        row.update(tokens_per_s=round(tps, 1), mfu=mfu(ctx, tps, g, seq, precision),
                   peak_mem_gib=r.get("peak_allocated_gib"), updates=r["updates"],
                   peak_reserved_gib=r.get("peak_reserved_gib"),
                   gpu_busy_pct=ctx.monitor.busy_pct(r["t0"], r["t1"]),
                   smi_peak_gib=ctx.monitor.peak_gib(t_start, r["t1"]),
                   attn_implementation=r.get("attn_implementation"), tf32=r.get("tf32"),
                   seconds=round(time.time() - t_start, 1))
    ctx.results.add(row)


def speed(ctx, vocab):
    a = ctx.args
    if a.tiny:
        g = {"hidden": 128, "layers": 2, "heads": 4, "ffn": 512, "vocab": vocab}
    else:
        g = {"hidden": 768, "layers": 12, "heads": 12, "ffn": 3072, "vocab": vocab}
    grid = []
    for precision in a.precisions.split(","):
        for seq in [int(s) for s in a.seqs.split(",")]:
            batches = a.batches.get(seq) or ([8, 4] if a.tiny else [32])
            for batch in batches:
                grid.append((precision, seq, batch))
    systems = a.systems.split(",")
    data_dir, data_error = None, None
    if "roberta-train" in systems:
        try:
            data_dir = preprocess(ctx, "data-speed", a.tokenizer, ctx.cap(180))
        except Exception as e:  # noqa: BLE001 - each roberta-train row records it
            data_error = str(e)[:500]
    worker = TorchWorker(ctx)
    if "pytorch-masked-head" in systems or "pytorch-full-head" in systems:
        r = worker.run({"kind": "info", "size": 512 if a.tiny or a.device == "cpu" else 8192},
                       120)
        ctx.results.machine.update({k: r.get(k) for k in (
            "torch", "transformers", "torch_cuda", "torch_device_name",
            "measured_matmul_tflops") if k in r} if "error" not in r else {
            "torch": "error: " + r["error"]})
        ctx.results.write()
    for precision, seq, batch in grid:
        for system in systems:
            left = ctx.remaining() - 5
            minimum = a.min_row_s
            if left < minimum:
                ctx.results.add({"system": system, "device": a.device, "precision": precision,
                                 "seq_len": seq, "batch": batch, "tokens_per_s": None,
                                 "skipped": f"budget: {left:.0f} s left"})
                continue
            if system == "roberta-train" and data_error:
                ctx.results.add({"system": system, "device": a.device, "precision": precision,
                                 "seq_len": seq, "batch": batch, "tokens_per_s": None,
                                 "error": data_error})
            elif system == "roberta-train":
                speed_roberta_train(ctx, g, data_dir, seq, batch, precision,
                                    min(a.row_timeout, left))
            else:
                speed_pytorch(ctx, worker, g, seq, batch, precision,
                              system.split("-")[1], min(a.row_timeout, left))
    worker.close()
    for q in ctx.results.ratios:
        log(f"ratio {q['precision']} seq {q['seq_len']} batch {q['batch']}: roberta-train / "
            f"pytorch masked head {q['vs_pytorch_masked_head']}, / full head "
            f"{q['vs_pytorch_full_head']}")


# --- profile ------------------------------------------------------------------------------------
# One update broken down two ways: by phase (`log.profile_every = 1`: the device synchronised
# after data, forward, backward, all-reduce, norm and read, optimizer) and, on cubecl
# backends, by kernel (cubecl's own profiler, `[profiling.logger] level = "basic"` in a
# cubecl.toml of the run's working directory: every kernel timed alone, and a table of
# name, duration and count written at each device synchronisation). The kernels of one
# update are those of a run of U updates less those of the same run of U − 1, both after
# a first run in the same directory has filled the autotune and kernel caches (so neither
# autotunes). Kernels are grouped by what their names say they do.
KERNEL_CLASSES = [
    ("attention", r"attention|flash"),
    ("matmul", r"matmul|gemm|mma|cmma|tile_"),
    ("random", r"random|bernoulli|prng|uniform|normal"),
    ("reduce", r"reduce|sum|mean|argmax|argmin|max|min|norm|softmax"),
    ("copy/cast", r"contiguous|copy|cast|slice|gather|scatter|select|cat|index|transpose|"
                  r"permute|fill|expand|repeat|into_"),
    ("fused elementwise", r"fuse|elemwise|elementwise|unary|binary|trace|clamp|mask|where"),
]
DURATION_UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def kernel_class(name):
    low = name.lower()
    for cls, pattern in KERNEL_CLASSES:
        if re.search(pattern, low):
            return cls
    return "other"


def parse_duration(text):
    m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", text.strip())
    return float(m.group(1)) * DURATION_UNITS[m.group(2)] if m else None


def kernel_totals(path):
    """Sums cubecl's profile tables in `path`: {name: [count, seconds]}."""
    totals = {}
    if not os.path.exists(path):
        return totals
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            first = parse_duration(cells[0]) if cells else None
            if first is not None and len(cells) >= 2:
                # level "basic": one line per kernel, `| duration | name parts… | runtime`
                name, count, seconds = " | ".join(cells[1:-1] or cells[1:]), 1, first
            elif len(cells) == 4 and cells[0] not in ("Name", "Total") and cells[2].isdigit():
                # a summary table: `| name | duration | count | … |`
                seconds = parse_duration(cells[1])
                if seconds is None:
                    continue
                name, count = cells[0], int(cells[2])
            else:
                continue
            t = totals.setdefault(name, [0, 0.0])
            t[0] += count
            t[1] += seconds
    return totals


CUBECL_PROFILE_TOML = """# written by scripts/gpu_check.py: per-kernel timings of roberta-train's updates
[profiling.logger]
level = "basic"
file = "kernels.log"
append = false

[compilation]
cache = "local"

[autotune]
cache = "local"
"""


def profile(ctx, vocab):
    """Phases and kernels of one roberta-base update at seq 512 (tiny with --tiny), bf16
    where the device has it: written into the JSON's `profile`."""
    a = ctx.args
    quickstart = (a.profile_geometry or ("quickstart" if a.tiny else "roberta-base")) == "quickstart"
    if quickstart:
        g = {"hidden": 128, "layers": 2, "heads": 4, "ffn": 512, "vocab": vocab}
    else:
        g = {"hidden": 768, "layers": 12, "heads": 12, "ffn": 3072, "vocab": vocab}
    seq = a.profile_seq or (64 if a.tiny else 512)
    batch = a.profile_batch or (a.batches.get(seq) or [8 if a.tiny else 32])[0]
    precision = "bf16" if a.device.startswith("cuda") else "fp32"  # lavapipe has no bf16
    warmup = 2 if a.tiny else 3
    data_dir = preprocess(ctx, "data-profile", a.tokenizer, ctx.cap(180))
    prof = {"device": a.device, "precision": precision, "seq_len": seq, "batch": batch,
            "geometry": g, "geometry_name": "quickstart" if quickstart else "roberta-base",
            "phases_s": None, "kernels": None}
    ctx.results.profile = prof
    cwd = os.path.join(ctx.work, "profile")
    os.makedirs(cwd, exist_ok=True)
    cubecl = a.device.startswith(("cuda", "wgpu"))
    if cubecl:
        with open(os.path.join(cwd, "cubecl.toml"), "w") as f:
            f.write(CUBECL_PROFILE_TOML)

    def run(name, updates, kernels):
        cfg = speed_config(g, data_dir, a.tokenizer, seq, batch, precision, warmup,
                           updates - warmup)
        env = dict(ctx.env)
        if not kernels:
            env["CUBECL_DEBUG_LOG"] = "0"  # overrides the cubecl.toml: no kernel profiling
        res = pretrain(ctx, name, cfg, a.device, ctx.cap(a.profile_timeout),
                       sets=("log.profile_every=1",), cwd=cwd, env=env)
        log_path = os.path.join(cwd, "kernels.log")
        if kernels and os.path.exists(log_path):
            shutil.copy(log_path, os.path.join(ctx.logs, name, "kernels.log"))
        return res, kernel_totals(log_path) if kernels else {}

    res, _ = run("profile-phases", warmup + 2, False)
    last = res["lines"][-1] if res["lines"] else {}
    prof["phases_s"] = last.get("profile")
    rates = [l["tokens_per_s"] for l in res["lines"] if l["step"] > warmup]
    if rates:
        prof["tokens_per_s_profiled"] = round(rates[-1], 1)
    if not res["ok"]:
        prof["error"] = res["error"]
    ctx.results.write()
    if not cubecl:
        prof["kernels"] = "not a cubecl backend: no per-kernel profile"
        ctx.results.write()
        return
    u = warmup + 2
    _, before = run("profile-kernels-a", u - 1, True)
    res, after = run("profile-kernels-b", u, True)
    one = {}
    for name, (count, seconds) in after.items():
        c0, s0 = before.get(name, (0, 0.0))
        if count - c0 > 0:
            one[name] = [count - c0, seconds - s0]
    classes = {}
    for name, (count, seconds) in one.items():
        c = classes.setdefault(kernel_class(name), {"kernels": 0, "seconds": 0.0})
        c["kernels"] += count
        c["seconds"] += seconds
    total = sum(c["seconds"] for c in classes.values()) or 1.0
    for c in classes.values():
        c["seconds"] = round(c["seconds"], 6)
        c["share"] = round(c["seconds"] / total, 3)
    top = sorted(one.items(), key=lambda kv: -kv[1][1])[:25]
    prof["kernels"] = {
        "per_update": sum(c for c, _ in one.values()),
        "seconds_per_update": round(total, 6),
        "classes": dict(sorted(classes.items(), key=lambda kv: -kv[1]["seconds"])),
        "top": [{"name": n, "class": kernel_class(n), "count": c, "seconds": round(t, 6)}
                for n, (c, t) in top],
    }
    if not res["ok"]:
        prof["kernels_error"] = res["error"]
    ctx.results.write()


def profile_markdown(p):
    if not p:
        return []
    lines = ["", f"## One update, profiled ({p.get('geometry_name', 'roberta-base')}, "
             f"{p['device']}, {p['precision']}, seq {p['seq_len']}, batch {p['batch']})", ""]
    if p.get("error"):
        lines.append(f"error: {p['error']}")
    phases = p.get("phases_s") or {}
    if phases:
        lines += ["| phase | seconds |", "|---|---|"]
        lines += [f"| {k[:-2]} | {v:.4f} |" for k, v in phases.items()]
    k = p.get("kernels")
    if isinstance(k, dict):
        lines += ["", f"{k['per_update']} kernels per update, {k['seconds_per_update']:.4f} s "
                  "of kernel time (each timed alone)", "",
                  "| class | kernels | seconds | share |", "|---|---|---|---|"]
        lines += [f"| {c} | {v['kernels']} | {v['seconds']:.4f} | {v['share']:.0%} |"
                  for c, v in k["classes"].items()]
    elif k:
        lines.append(f"kernels: {k}")
    return lines


# --- the torch worker --------------------------------------------------------------------------
def worker_main(args):
    import torch
    import transformers

    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(os.cpu_count())
    torch.backends.cuda.matmul.allow_tf32 = bool(args.torch_tf32)
    torch.backends.cudnn.allow_tf32 = bool(args.torch_tf32)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def info(job):
        out = {"torch": torch.__version__, "transformers": transformers.__version__,
               "torch_cuda": torch.version.cuda,
               "torch_device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
               else "cpu"}
        n = job["size"]
        tflops = {}
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            x = torch.randn(n, n, device=dev, dtype=dtype)
            y = torch.randn(n, n, device=dev, dtype=dtype)
            for _ in range(2):
                x @ y
            sync()
            reps, t = 0, time.time()
            while reps < 3 or time.time() - t < 1.0:
                x @ y
                reps += 1
                if reps % 10 == 0:
                    sync()
            sync()
            tflops[name] = round(2 * n ** 3 * reps / (time.time() - t) / 1e12, 2)
            del x, y
        out["measured_matmul_tflops"] = {"size": n, "tf32": bool(args.torch_tf32), **tflops}
        return out

    def speed_job(job):
        from transformers import RobertaConfig, RobertaForMaskedLM

        g, seq, batch = job["geometry"], job["seq"], job["batch"]
        vocab, bf16, full = g["vocab"], job["precision"] == "bf16", job["head"] == "full"
        torch.manual_seed(0)
        cfg = RobertaConfig(vocab_size=vocab, hidden_size=g["hidden"],
                            num_hidden_layers=g["layers"], num_attention_heads=g["heads"],
                            intermediate_size=g["ffn"], max_position_embeddings=max(514, seq + 2),
                            type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
                            bos_token_id=0, eos_token_id=2, hidden_dropout_prob=0.1,
                            attention_probs_dropout_prob=0.1)
        with dev:  # initialised on the device: seconds faster for roberta-base than on cpu
            try:
                model = RobertaForMaskedLM._from_config(cfg, attn_implementation="sdpa")
            except (TypeError, ValueError, AttributeError):
                cfg._attn_implementation = "sdpa"
                model = RobertaForMaskedLM(cfg)
        model.to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.98), eps=1e-6,
                                weight_decay=0.01, fused=dev.type == "cuda")
        mask_id = vocab - 1  # <mask> is the last id in RoBERTa's vocabularies
        batches = []
        for _ in range(4):
            ids = torch.randint(4, vocab - 1, (batch, seq), device=dev)
            ids[:, 0], ids[:, -1] = 0, 2
            masked = torch.rand(batch, seq, device=dev) < MASK_FRACTION
            masked[:, 0] = masked[:, -1] = False
            labels = torch.where(masked, ids, torch.full_like(ids, -100))
            inputs = torch.where(masked, torch.full_like(ids, mask_id), ids)
            # The masked positions, flat, as roberta-train's loader hands them over.
            positions = masked.view(-1).nonzero().squeeze(1)
            batches.append((inputs, torch.ones_like(ids), labels, positions,
                            labels.view(-1)[positions]))
        ce = torch.nn.functional.cross_entropy

        def step(i):
            inputs, attn, labels, positions, targets = batches[i % len(batches)]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                if full:
                    loss = model(input_ids=inputs, attention_mask=attn, labels=labels).loss
                else:
                    hidden = model.roberta(input_ids=inputs, attention_mask=attn)[0]
                    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
                    loss = ce(model.lm_head(picked).float(), targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        for i in range(job["warmup"]):
            step(i)
        sync()
        t0 = time.time()
        for i in range(job["updates"]):
            loss = step(i)
        sync()
        t1 = time.time()
        out = {"tokens_per_s": batch * seq * job["updates"] / (t1 - t0), "t0": t0, "t1": t1,
               "updates": job["updates"], "loss": float(loss.detach()),
               "attn_implementation": getattr(model.config, "_attn_implementation", None),
               "tf32": bool(args.torch_tf32)}
        if dev.type == "cuda":
            out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
            out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(dev) / 2**30, 2)
        batches.clear()
        return out

    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            result = info(job) if job["kind"] == "info" else speed_job(job)
        except Exception as e:  # noqa: BLE001 - out of memory among them: reported, go on
            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        import gc
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        print("@@RESULT " + json.dumps(result), flush=True)


# --- machine -----------------------------------------------------------------------------------
def vocab_size(tokenizer_dir):
    path = tokenizer_dir if tokenizer_dir.endswith(".json") else os.path.join(
        tokenizer_dir, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        t = json.load(f)
    ids = list(t["model"]["vocab"].values()) + [a["id"] for a in t.get("added_tokens", [])]
    return max(ids) + 1


def machine_info(args, cuda_notes):
    m = {"hostname": socket.gethostname(),
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "device": args.device, "cpus": os.cpu_count(), "python": sys.version.split()[0],
         "tiny": args.tiny}
    index = gpu_index(args.device)
    if index is not None:
        q = quick(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                   "--format=csv,noheader", "-i", str(index)])
        if q:
            parts = [p.strip() for p in q.split(",")]
            m["gpu"], m["driver"] = parts[0], parts[1]
            m["gpu_memory"] = parts[2] if len(parts) > 2 else None
        text = quick(["nvidia-smi"]) or ""
        c = re.search(r"CUDA Version:\s*([0-9.]+)", text)
        m["cuda"] = c.group(1) if c else None
        nvcc = quick(["nvcc", "--version"])
        m["nvcc"] = nvcc.splitlines()[-1] if nvcc else None
        m.update(cuda_notes)
    else:
        m["gpu"] = m["driver"] = m["cuda"] = "cpu"
    v = quick([args.bin, "--version"])
    m["roberta_train"] = v
    m["roberta_train_sha256"] = sha256(args.bin)[:16]
    m["parity_sha256"] = sha256(args.parity)[:16] if os.path.exists(args.parity) else None
    m["burn"] = "0.21.0"
    lock = os.path.join(REPO, "Cargo.lock")
    if os.path.exists(lock):
        b = re.search(r'name = "burn"\nversion = "([^"]+)"', open(lock, encoding="utf-8").read())
        if b:
            m["burn"] = b.group(1)
    g = quick(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    if g:
        dirty = quick(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"])
        m["git"] = g + ("-dirty" if dirty else "")
    m["peaks"] = {"bf16": args.peak_bf16, "fp32": args.peak_fp32}
    return m


def gpu_index(device):
    m = re.match(r"(cuda|wgpu)(?::(\d+))?$", device)
    return int(m.group(2) or 0) if m else None


def parse_batches(text):
    """'128:256,128;512:64,32' → {128: [256, 128], 512: [64, 32]}."""
    out = {}
    for part in filter(None, text.split(";")):
        seq, bs = part.split(":")
        out[int(seq)] = [int(b) for b in bs.split(",")]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", help="roberta-train (or .xz/.gz of it)")
    p.add_argument("--parity", help="the parity test binary (or .xz/.gz)")
    p.add_argument("--device", default="cuda:0", help="cuda:N or cpu (or wgpu:N)")
    p.add_argument("--tokenizer", help="roberta-base's tokenizer directory (tokenizer.json)")
    p.add_argument("--out", help="where gpu_check.json, gpu_check.md and logs/ go")
    p.add_argument("--tiny", action="store_true",
                   help="dry run: tiny model, seq 32/64, batches 8/4 and 4/2, 2+3 updates")
    p.add_argument("--budget-s", type=float, default=540,
                   help="skip the remaining speed rows once this many seconds are spent")
    p.add_argument("--skip", default="",
                   help="comma-separated steps to leave out: parity, losses, speed")
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--seqs", default="512,128", help="sequence lengths, in the order run")
    p.add_argument("--batches", default=None,
                   help="per sequence length, largest first: '512:64,32;128:256,128'")
    p.add_argument("--systems", default="roberta-train,pytorch-masked-head,pytorch-full-head")
    p.add_argument("--warmup", type=int, default=None, help="warm-up updates (default 5)")
    p.add_argument("--updates", type=int, default=None, help="measured updates (default 30)")
    p.add_argument("--peak-bf16", type=float, default=None,
                   help="FLOP/s for MFU (cuda default 790e12, the H200's measured bf16)")
    p.add_argument("--peak-fp32", type=float, default=None,
                   help="FLOP/s for MFU (cuda default 60e12, fp32 without tensor cores)")
    p.add_argument("--torch-tf32", action="store_true", help="let PyTorch's fp32 use TF32")
    p.add_argument("--parity-timeout", type=float, default=180)
    p.add_argument("--correctness-timeout", type=float, default=150,
                   help="per tiny pretraining run")
    p.add_argument("--row-timeout", type=float, default=150, help="per speed row")
    p.add_argument("--profile-geometry", choices=["roberta-base", "quickstart"],
                   help="the profiled model (default roberta-base; quickstart with --tiny)")
    p.add_argument("--profile-seq", type=int, help="profiled sequence length (default 512)")
    p.add_argument("--profile-batch", type=int, help="profiled batch (default 32)")
    p.add_argument("--profile-timeout", type=float, default=90,
                   help="per run of the profile step (three runs)")
    p.add_argument("--min-row-s", type=float, default=25,
                   help="a speed row starts only with this many seconds of budget left")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary run directories")
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="backslashreplace")
    if args.torch_worker:
        return worker_main(args)
    for k in ("bin", "parity", "tokenizer", "out"):
        if not getattr(args, k):
            p.error(f"--{k} is required")

    on_gpu = gpu_index(args.device) is not None
    if args.peak_bf16 is None and on_gpu:
        args.peak_bf16 = H200_PEAK_BF16
    if args.peak_fp32 is None and on_gpu:
        args.peak_fp32 = H200_PEAK_FP32
    if args.warmup is None:
        args.warmup = 2 if args.tiny else 5
    if args.updates is None:
        args.updates = 3 if args.tiny else 30
    if args.batches is None:
        args.batches = "64:4,2;32:8,4" if args.tiny else "512:64,32;128:256,128"
    if args.tiny and args.seqs == "512,128":
        args.seqs = "64,32"
    args.batches = parse_batches(args.batches)
    skip = set(filter(None, args.skip.split(",")))

    os.makedirs(args.out, exist_ok=True)
    args.out = os.path.abspath(args.out)
    args.tokenizer = os.path.abspath(args.tokenizer)
    work = tempfile.mkdtemp(prefix="gpu_check-")
    results = Results(args.out)
    monitor = None
    try:
        args.bin = unpack(args.bin, work)
        args.parity = unpack(args.parity, work)
        env, cuda_notes = cuda_env() if on_gpu else (dict(os.environ), {})
        env["NO_COLOR"] = "1"
        results.machine = machine_info(args, cuda_notes)
        results.machine["args"] = {k: v for k, v in vars(args).items() if k != "torch_worker"}
        results.write()
        log("machine " + json.dumps(results.machine))
        monitor = GpuMonitor(gpu_index(args.device))
        ctx = Ctx(args, work, results, monitor, env)
        steps = [("parity", check_parity), ("losses", check_losses),
                 ("profile", lambda c: profile(c, vocab_size(args.tokenizer))),
                 ("speed", lambda c: speed(c, vocab_size(args.tokenizer)))]
        results.machine["phase_s"] = {}
        for name, fn in steps:
            if name in skip:
                continue
            log(f"== {name}")
            t = time.time()
            try:
                fn(ctx)
            except Exception as e:  # noqa: BLE001 - one step's failure must not stop the others
                traceback.print_exc()
                results.add({"check": name, "device": args.device, "pass": False,
                             "error": f"{type(e).__name__}: {str(e)[:400]}"})
            results.machine["phase_s"][name] = round(time.time() - t, 1)
    finally:
        if monitor:
            monitor.stop()
        results.machine["wall_s"] = round(time.time() - T0, 1)
        results.write()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in results.rows if r.get("pass") is False]
    errors = [r for r in results.rows if "system" in r and r.get("error")]
    skipped = [r for r in results.rows if r.get("skipped")]
    log(f"done in {time.time() - T0:.0f} s: {len(results.rows)} rows, {len(failed)} failed "
        f"checks, {len(errors)} speed rows with errors, {len(skipped)} skipped; "
        f"{os.path.join(args.out, 'gpu_check.json')}, gpu_check.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
