"""Issue 27, goal 1: three ways around oneDNN's convolution kernels, timed against them on this CPU.

The crafting benchmark (``suites/speed/bench_attacks.py``) shows bf16 PGD spending 81% of its time
in convolutions that already run at about 91% of the bf16 matmul peak. This script checks the three
remaining ideas for a faster convolution path, each as a same-run ratio (> 1: the alternative is
faster), median of ``--rounds`` timed calls, bf16, channels_last, batch 128:

1. **Members as one grouped convolution**: the forward and input gradient of 4 members' 3x3
   convolutions at one ResNet-20 stage width (16, 32, 64 channels) as one ``groups=4`` convolution,
   against 4 separate ones.
2. **The input gradient as a forward convolution**: for every convolution shape of ResNet-20, the
   input gradient computed by ``F.conv2d`` of the output gradient with the transposed, flipped
   weights (stride 1), or by ``conv_transpose2d`` (stride 2), against oneDNN's backward-data
   (``aten.convolution_backward``); with whether the two agree bit for bit.
3. **Two single-threaded streams**: the input gradient of 4 BatchNorm-folded ResNet-20 members
   on a batch, run as two Python threads of two members each on one OpenMP thread each, against
   one stream of all four on two threads. Each side runs in its own subprocess, since the OpenMP
   thread count is fixed when a process starts.

Writes ``experiments/results/conv_alternatives.{json,md}``::

    .venv/bin/python experiments/conv_alternatives.py

About two minutes on a quiet 2-core CPU. Time only on a quiet machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

BATCH = 128
CL = torch.channels_last
# (in channels, out channels, input side, kernel, stride): every convolution shape of ResNet-20 at 32 px
RESNET20_CONVS = [(3, 16, 32, 3, 1), (16, 16, 32, 3, 1), (16, 32, 32, 3, 2), (16, 32, 32, 1, 2),
                  (32, 32, 16, 3, 1), (32, 64, 16, 3, 2), (32, 64, 16, 1, 2), (64, 64, 8, 3, 1)]


def median_s(fn: Callable[[], Any], rounds: int) -> float:
    """Median seconds of ``rounds`` calls after 3 warm-up calls (oneDNN builds its primitives on the first)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).bfloat16().contiguous(memory_format=CL)


def _separate(xs: list[torch.Tensor], ws: list[torch.Tensor]) -> None:
    for x, w in zip(xs, ws, strict=True):
        y = F.conv2d(x, w, padding=1)
        torch.autograd.grad(y, x, y)


def _grouped(x: torch.Tensor, w: torch.Tensor, groups: int) -> None:
    y = F.conv2d(x, w, padding=1, groups=groups)
    torch.autograd.grad(y, x, y)


def grouped_vs_separate(rounds: int, members: int = 4) -> list[dict[str, Any]]:
    """Forward + input gradient of ``members`` 3x3 convolutions, separately and as one grouped convolution."""
    rows = []
    for c, side in ((16, 32), (32, 16), (64, 8)):
        xs = [bf16(BATCH, c, side, side).requires_grad_() for _ in range(members)]
        ws = [bf16(c, c, 3, 3) for _ in range(members)]
        xg = torch.cat([x.detach() for x in xs], 1).contiguous(memory_format=CL).requires_grad_()
        wg = torch.cat(ws).contiguous(memory_format=CL)
        sep = median_s(functools.partial(_separate, xs, ws), rounds)
        grp = median_s(functools.partial(_grouped, xg, wg, members), rounds)
        rows.append({"channels": c, "side": side, "separate_ms": 1e3 * sep, "grouped_ms": 1e3 * grp,
                     "grouped_speedup": sep / grp})
    return rows


def input_gradient_as_forward(go: torch.Tensor, w: torch.Tensor, stride: int, pad: int, side: int) -> torch.Tensor:
    """The input gradient of ``conv2d(x, w, stride, pad)`` computed without ``convolution_backward``."""
    k = w.shape[-1]
    if stride == 1:
        flipped = w.flip(2, 3).transpose(0, 1).contiguous(memory_format=CL)
        return F.conv2d(go, flipped, padding=k - 1 - pad)
    extra = side - ((go.shape[-1] - 1) * stride - 2 * pad + k)
    return F.conv_transpose2d(go, w, stride=stride, padding=pad, output_padding=extra)


def _backward_data(go: torch.Tensor, x: torch.Tensor, w: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    """oneDNN's input gradient (``aten.convolution_backward`` asked for the input's gradient only)."""
    return torch.ops.aten.convolution_backward(go, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1,
                                               [True, False, False])[0]


def backward_data_vs_forward(rounds: int) -> list[dict[str, Any]]:
    """oneDNN's backward-data against :func:`input_gradient_as_forward`, per ResNet-20 convolution shape."""
    rows = []
    for cin, cout, side, k, stride in RESNET20_CONVS:
        pad = k // 2
        x, w = bf16(BATCH, cin, side, side), bf16(cout, cin, k, k)
        go = torch.randn_like(F.conv2d(x, w, stride=stride, padding=pad)).contiguous(memory_format=CL)
        onednn = functools.partial(_backward_data, go, x, w, stride, pad)
        alternative = functools.partial(input_gradient_as_forward, go, w, stride, pad, side)
        same = bool(torch.equal(onednn(), alternative()))
        ref, alt = median_s(onednn, rounds), median_s(alternative, rounds)
        rows.append({"conv": f"{cin}->{cout} k{k} s{stride} @{side}px", "backward_data_ms": 1e3 * ref,
                     "as_forward_ms": 1e3 * alt, "as_forward_speedup": ref / alt, "bit_identical": same})
    return rows


def _stream_child(mode: str, rounds: int) -> float:
    """In a subprocess: the input gradient of 4 folded ResNet-20 members, one stream or two threads."""
    from robust_ens import models
    from robust_ens.models.folding import fold_batchnorm

    torch.manual_seed(0)
    ms = [fold_batchnorm(models.create("resnet20", num_classes=10).eval()).to(memory_format=CL) for _ in range(4)]
    x = torch.rand(BATCH, 3, 32, 32).contiguous(memory_format=CL)
    y = torch.randint(0, 10, (BATCH,))

    def grad(members: list[torch.nn.Module]) -> torch.Tensor:
        xx = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sum(F.cross_entropy(m(xx).float(), y) for m in members)
        return torch.autograd.grad(loss, xx)[0]

    def two_threads() -> torch.Tensor:
        out: list[torch.Tensor] = [x, x]

        def run(i: int) -> None:
            out[i] = grad(ms[2 * i:2 * i + 2])

        t = threading.Thread(target=run, args=(1,))
        t.start()
        run(0)
        t.join()
        return out[0] + out[1]

    return median_s(two_threads if mode == "threads" else (lambda: grad(ms)), rounds)


def streams(rounds: int) -> dict[str, Any]:
    """One 2-thread stream vs two 1-thread streams, alternating subprocesses, 2 rounds each."""
    times: dict[str, list[float]] = {"one_stream_2_threads": [], "two_streams_1_thread": []}
    for _ in range(2):
        for key, mode, threads in (("one_stream_2_threads", "serial", "2"), ("two_streams_1_thread", "threads", "1")):
            env = {**os.environ, "OMP_NUM_THREADS": threads, "ROBUST_ENS_THREADS": "0"}
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--rounds", str(rounds)], env=env,
                                 capture_output=True, text=True, check=True)
            times[key].append(float(out.stdout.strip().splitlines()[-1]))
    one, two = min(times["one_stream_2_threads"]), min(times["two_streams_1_thread"])
    return {"one_stream_2_threads_ms": 1e3 * one, "two_streams_1_thread_ms": 1e3 * two, "two_streams_speedup": one / two}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Convolution alternatives on {report['device']} ({report['date']})", "",
             f"bf16, channels_last, batch {BATCH}; median of {report['rounds']} calls. Speed-up > 1: the "
             "alternative is faster. Command: `.venv/bin/python experiments/conv_alternatives.py`.", "",
             "## 4 members as one grouped convolution (forward + input gradient)", "",
             "| channels | side | separate ms | grouped ms | speed-up |", "|---|---|---|---|---|"]
    lines += [f"| {r['channels']} | {r['side']} | {r['separate_ms']:.2f} | {r['grouped_ms']:.2f} | "
              f"{r['grouped_speedup']:.2f}x |" for r in report["grouped"]]
    lines += ["", "## Input gradient: oneDNN backward-data vs a forward (or transposed) convolution", "",
              "| convolution | backward-data ms | as forward ms | speed-up | bit-identical |", "|---|---|---|---|---|"]
    lines += [f"| {r['conv']} | {r['backward_data_ms']:.3f} | {r['as_forward_ms']:.3f} | {r['as_forward_speedup']:.2f}x "
              f"| {'yes' if r['bit_identical'] else 'no'} |" for r in report["input_gradient"]]
    s = report["streams"]
    lines += ["", "## Input gradient of 4 folded ResNet-20 members: two 1-thread streams vs one 2-thread stream", "",
              f"One stream: {s['one_stream_2_threads_ms']:.1f} ms; two streams: {s['two_streams_1_thread_ms']:.1f} ms; "
              f"speed-up {s['two_streams_speedup']:.2f}x (best of 2 subprocesses each).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="timed calls per measurement (median)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "conv_alternatives")
    ap.add_argument("--child", choices=["serial", "threads"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(_stream_child(args.child, max(args.rounds // 2, 5)))
        return
    from robust_ens.bench.craft import device_name

    torch.manual_seed(0)
    report = {"device": device_name(torch.device("cpu")), "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "grouped": grouped_vs_separate(args.rounds), "input_gradient": backward_data_vs_forward(args.rounds),
              "streams": streams(args.rounds)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
