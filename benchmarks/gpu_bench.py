"""Time the CUDA driver of gluon_hmm against a PyTorch log-space loop on one GPU.

For each (B, N, T): forward (log-likelihood) and forward + backward (gradients
of sum(loglik) with respect to log_init, log_trans and log_emit), float32, a
shared (N, N) transition matrix, every sequence of full length.

* ours: the C ABI of build/libgluon_hmm_engine.so (tests/gpu/build_engine.sh),
  hmm_forward / hmm_forward + hmm_backward, on PyTorch's current stream;
* PyTorch: a step loop  a_t = logsumexp(a_{t-1}[:, :, None] + log_trans, 1) + log_emit[:, t],
  autograd for the gradients.

Times are CUDA-event times of whole calls (every kernel launch included), the
median of --repeats runs after --warmup runs.  The PyTorch loop costs tens of
microseconds per step; beyond --torch-max-steps steps it is timed on the first
--torch-max-steps steps and scaled linearly in T (marked "~").  For T >= 10^4 the
library is also timed with its parallel-in-time variant switched off
(GLUON_HMM_CUDA_CHUNK=0), as the "serial" row.

    tests/gpu/build_engine.sh
    python3 benchmarks/gpu_bench.py --out benchmarks/gpu_results.md

Prints a Markdown table and writes it to --out.
"""
import argparse
import ctypes
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SIZES = [(8, 50, 100), (8, 50, 1000), (8, 50, 3000), (1, 8, 100000), (1, 8, 1000000),
                 (16, 256, 200)]


class Problem(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("time", ctypes.c_int64), ("states", ctypes.c_int64),
                ("dtype", ctypes.c_int), ("init_mode", ctypes.c_int), ("trans_mode", ctypes.c_int),
                ("lengths_type", ctypes.c_int), ("device", ctypes.c_int),
                ("num_threads", ctypes.c_int), ("stream", ctypes.c_void_p)]


class Inputs(ctypes.Structure):
    _fields_ = [("log_init", ctypes.c_void_p), ("log_trans", ctypes.c_void_p),
                ("log_emit", ctypes.c_void_p), ("lengths", ctypes.c_void_p)]


def load_library(path):
    lib = ctypes.CDLL(str(path))
    P, I, V = ctypes.POINTER(Problem), ctypes.POINTER(Inputs), ctypes.c_void_p
    sigs = {
        "hmm_has_cuda": ([], ctypes.c_int),
        "hmm_status_string": ([ctypes.c_int], ctypes.c_char_p),
        "hmm_saved_size": ([P, ctypes.POINTER(ctypes.c_int64)], ctypes.c_int),
        "hmm_backward_workspace_size": ([P, ctypes.POINTER(ctypes.c_size_t)], ctypes.c_int),
        "hmm_forward": ([P, I, V, V], ctypes.c_int),
        "hmm_backward": ([P, I, V, V, V, V, V, V], ctypes.c_int),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    if not lib.hmm_has_cuda():
        raise SystemExit(f"{path} was built without CUDA (run tests/gpu/build_engine.sh)")
    return lib


class Ours:
    """Device buffers and the two timed calls for one problem size."""

    def __init__(self, lib, torch, li, lt, le):
        self.lib, self.torch = lib, torch
        B, T, N = le.shape
        self.p = Problem(B, T, N, 0, 0, 0, 0, 1, 0, torch.cuda.current_stream().cuda_stream)
        self.inp = Inputs(li.data_ptr(), lt.data_ptr(), le.data_ptr(), None)
        n = ctypes.c_int64()
        ws = ctypes.c_size_t()
        self._check(lib.hmm_saved_size(ctypes.byref(self.p), ctypes.byref(n)))
        self._check(lib.hmm_backward_workspace_size(ctypes.byref(self.p), ctypes.byref(ws)))
        dev = dict(device="cuda")
        self.loglik = torch.empty(B, dtype=torch.float32, **dev)
        self.saved = torch.empty(n.value, dtype=torch.float32, **dev)
        self.w = torch.ones(B, dtype=torch.float32, **dev)
        self.g_init = torch.empty_like(li)
        self.g_trans = torch.empty_like(lt)
        self.g_emit = torch.empty_like(le)
        self.ws = torch.empty(max(ws.value, 1), dtype=torch.uint8, **dev)
        self.ws_bytes = ws.value

    def _check(self, st):
        if st != 0:
            raise RuntimeError(f"gluon_hmm call failed: {self.lib.hmm_status_string(st).decode()}")

    def forward(self):
        self._check(self.lib.hmm_forward(ctypes.byref(self.p), ctypes.byref(self.inp),
                                         self.loglik.data_ptr(), self.saved.data_ptr()))

    def forward_backward(self):
        self.forward()
        self._check(self.lib.hmm_backward(ctypes.byref(self.p), ctypes.byref(self.inp),
                                          self.saved.data_ptr(), self.w.data_ptr(),
                                          self.g_init.data_ptr(), self.g_trans.data_ptr(),
                                          self.g_emit.data_ptr(), self.ws.data_ptr()))


def torch_loglik(torch, li, lt, le, steps):
    a = li + le[:, 0]
    for t in range(1, steps):
        a = torch.logsumexp(a[:, :, None] + lt, dim=1) + le[:, t]
    return torch.logsumexp(a, dim=1)


def cuda_time(torch, fn, warmup, repeats, budget_s=None):
    """Median milliseconds of fn() by CUDA events (stops early past budget_s)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    t0 = time.perf_counter()
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if budget_s is not None and time.perf_counter() - t0 > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def set_chunk_env(value):
    if value is None:
        os.environ.pop("GLUON_HMM_CUDA_CHUNK", None)
    else:
        os.environ["GLUON_HMM_CUDA_CHUNK"] = value


def fmt(x, digits=3):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=pathlib.Path, help="write the Markdown report here")
    ap.add_argument("--lib", type=pathlib.Path, default=ROOT / "build" / "libgluon_hmm_engine.so")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--torch-repeats", type=int, default=5)
    ap.add_argument("--torch-max-steps", type=int, default=5000,
                    help="longest PyTorch loop actually run; longer ones are scaled from it")
    ap.add_argument("--sizes", nargs="*", metavar="B,N,T",
                    help="problem sizes (default: the six of issue 5)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        raise SystemExit("gpu_bench.py needs PyTorch with CUDA")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench.py needs a CUDA device")
    if not args.lib.exists():
        raise SystemExit(f"{args.lib} not found: run tests/gpu/build_engine.sh first")
    lib = load_library(args.lib)
    sizes = DEFAULT_SIZES if not args.sizes else [tuple(int(v) for v in s.split(",")) for s in args.sizes]
    gen = torch.Generator(device="cuda")
    gen.manual_seed(args.seed)
    prop = torch.cuda.get_device_properties(0)

    rows = []
    targets = []
    user_chunk = os.environ.get("GLUON_HMM_CUDA_CHUNK")
    for (B, N, T) in sizes:
        li = torch.log_softmax(torch.randn(N, generator=gen, device="cuda"), 0).contiguous()
        lt = torch.log_softmax(torch.randn(N, N, generator=gen, device="cuda"), 1).contiguous()
        le = (torch.randn(B, T, N, generator=gen, device="cuda") - 1.5).contiguous()
        ours = Ours(lib, torch, li, lt, le)
        variants = [("auto", user_chunk)]
        if T >= 10000 and user_chunk is None:
            variants.append(("serial", "0"))
        results = {}
        for name, env in variants:
            set_chunk_env(env)
            budget = 60.0
            f = cuda_time(torch, ours.forward, args.warmup, args.repeats, budget)
            fb = cuda_time(torch, ours.forward_backward, args.warmup, args.repeats, budget)
            torch.cuda.synchronize()
            results[name] = (f, fb, ours.loglik.clone())
        set_chunk_env(user_chunk)

        # PyTorch loop (scaled from a prefix when long)
        steps = min(T, args.torch_max_steps)
        scale = (T - 1) / (steps - 1) if steps > 1 and steps < T else 1.0
        with torch.no_grad():
            tf = cuda_time(torch, lambda: torch_loglik(torch, li, lt, le, steps), 1, args.torch_repeats, 120)
            ref_ll = torch_loglik(torch, li, lt, le, steps)
        lig, ltg, leg = (x.clone().requires_grad_(True) for x in (li, lt, le))

        def torch_fb():
            for x in (lig, ltg, leg):
                x.grad = None
            torch_loglik(torch, lig, ltg, leg, steps).sum().backward()

        tfb = cuda_time(torch, torch_fb, 1, args.torch_repeats, 120)
        tf *= scale
        tfb *= scale
        if steps == T:
            got = results["auto"][2]
            rel = float(((got - ref_ll).abs() / ref_ll.abs().clamp_min(1e-30)).max())
        else:
            rel = None
        for name, (f, fb, _) in results.items():
            rows.append(dict(B=B, N=N, T=T, variant=name, f=f, tf=tf, fb=fb, tfb=tfb,
                             approx=scale != 1.0, rel=rel))
        if (B, N, T) == (8, 50, 1000):
            f, fb, _ = results["auto"]
            targets.append(f"(8, 50, 1000) forward+backward: {fb:.3f} ms (target <= 1 ms: "
                           f"{'met' if fb <= 1.0 else 'NOT met'}), {tfb / fb:.0f}x the PyTorch loop "
                           f"(target >= 100x: {'met' if tfb / fb >= 100 else 'NOT met'})")
        print(f"done B={B} N={N} T={T}", file=sys.stderr, flush=True)

    lines = [
        "# gluon_hmm CUDA driver vs a PyTorch log-space loop",
        "",
        f"GPU: {prop.name} ({prop.multi_processor_count} SMs, compute capability "
        f"{prop.major}.{prop.minor}, {prop.total_memory / 2**30:.0f} GiB); PyTorch {torch.__version__}, "
        f"CUDA {torch.version.cuda}.",
        f"float32, shared (N, N) transition matrix, full-length sequences; CUDA-event time of whole "
        f"calls, median of {args.repeats} runs (PyTorch: {args.torch_repeats}) after warm-up. "
        f"'~': PyTorch timed on the first {args.torch_max_steps} steps and scaled to T. "
        f"'serial': GLUON_HMM_CUDA_CHUNK=0 (no parallel-in-time variant).",
        "",
        "| B | N | T | variant | ours fwd (ms) | PyTorch fwd (ms) | speed-up | ours fwd+bwd (ms) "
        "| PyTorch fwd+bwd (ms) | speed-up | ours fwd+bwd ms/step | PyTorch fwd+bwd ms/step "
        "| loglik max rel. diff |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a = "~" if r["approx"] else ""
        rel = "-" if r["rel"] is None else f"{r['rel']:.1e}"
        lines.append(
            f"| {r['B']} | {r['N']} | {r['T']} | {r['variant']} | {fmt(r['f'])} | {a}{fmt(r['tf'])} | "
            f"{a}{r['tf'] / r['f']:.0f}x | {fmt(r['fb'])} | {a}{fmt(r['tfb'])} | {a}{r['tfb'] / r['fb']:.0f}x | "
            f"{r['fb'] / r['T']:.3g} | {a}{r['tfb'] / r['T']:.3g} | {rel} |")
    lines += [""] + [f"- {t}" for t in targets]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
