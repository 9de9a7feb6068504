"""Why was bf16 slower than fp32 for the CNN ensemble on the H200 (gpu-check 2026-12-04, imagenet_slice)?

That run crafted Ens on ResNet-50 + VGG-16 + MobileNet-V2 + Inception-V3 (32 images, 224 px) in
0.82 s in fp32 and 2.47 s in bf16 (autocast + channels_last). This times one forward and one
input-gradient backward of each member alone, at the slice's batch, in every layout and precision,
with cuDNN's heuristics and with ``cudnn.benchmark``, and the BatchNorm-folded copy in bf16, so the
slow member and the slow setting show. ResNet-20 at batch 1024 (the crafting check) is timed too.

Run on a CUDA machine: ``python3 experiments/gpu_member_precision.py`` (writes
``$OUT/gpu_member_precision.json`` when ``$OUT`` is set). About a minute on an H200.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEMBERS = [("resnet50", 224, 32), ("vgg16", 224, 32), ("mobilenetv2_100", 224, 32), ("inception_v3", 299, 32),
           ("vit_base_patch16_224", 224, 32), ("resnet20", 32, 1024)]


def build(name: str) -> torch.nn.Module:
    if name == "resnet20":
        from robust_ens import models

        return models.create("resnet20", num_classes=10)
    import timm

    return timm.create_model(name, pretrained=False)


def step_seconds(model: torch.nn.Module, x: torch.Tensor, bf16: bool, reps: int = 5) -> float:
    """Median seconds of one forward + input-gradient backward."""

    def once() -> None:
        xg = x.detach().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model(xg).float()
        loss = F.cross_entropy(out, out.argmax(1))
        torch.autograd.grad(loss, xg)

    for _ in range(2):
        once()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        once()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main() -> None:
    from robust_ens.models.folding import fold_batchnorm

    dev = torch.device("cuda")
    rows = []
    for name, side, batch in MEMBERS:
        torch.manual_seed(0)
        base = build(name).eval().to(dev)
        for p in base.parameters():
            p.requires_grad_(False)
        x = torch.rand(batch, 3, side, side, device=dev)
        row: dict[str, object] = {"member": name, "side": side, "batch": batch}
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            tag = "bench" if bench else "heur"
            row[f"fp32_nchw_{tag}"] = step_seconds(base, x, bf16=False)
            row[f"bf16_nchw_{tag}"] = step_seconds(base, x, bf16=True)
            cl = base.to(memory_format=torch.channels_last)
            row[f"bf16_cl_{tag}"] = step_seconds(cl, x.contiguous(memory_format=torch.channels_last), bf16=True)
            base = cl.to(memory_format=torch.contiguous_format)
            folded = fold_batchnorm(base, x[:2])
            if folded is not None:
                f = folded.to(memory_format=torch.channels_last)
                row[f"bf16_cl_folded_{tag}"] = step_seconds(f, x.contiguous(memory_format=torch.channels_last), bf16=True)
        torch.backends.cudnn.benchmark = False
        rows.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        del base
        torch.cuda.empty_cache()
    out = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
           "seconds_per_forward_and_input_gradient": rows}
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_member_precision.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
