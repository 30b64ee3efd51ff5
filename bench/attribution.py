"""Attribution throughput: camdrift's engine vs pytorch-grad-cam vs bare inference.

On the same batch and the same two checkpoints (baseline, candidate) it times
  (a) camdrift: LayerCAM + Grad-CAM++ maps for both checkpoints, plus every drift metric,
  (b) pytorch-grad-cam: the same two methods' maps for both checkpoints (its way: a forward
      and a full backward per method and checkpoint),
  (c) the floor: bare no-grad inference of both checkpoints,
and prints images/s and the ratios (a vs b speed-up, a / c time, metrics share of a).
``--per-metric`` also times each metric alone on the same maps (its share of (a); a metric
alone pays for the pieces it shares with others, such as the one pixel order, so the shares
add up to more than the metrics' joint share), and the pixel order alone: the floor of any
exact rank metric).

    python bench/attribution.py --archs resnet50v2,densenet201 --size 224 --batch 8
    python bench/attribution.py --archs resnet50v2 --skip-peer --per-metric
    python bench/attribution.py --device cuda --dtype bf16   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from training.zoo import create_model
from worker.catalog import DEFAULT_METRICS as METRICS
from worker.engine.attribution import attribute_batch
from worker.engine.audit import metrics_by_method
from worker.engine.ordering import ascending_order

METHODS = ("layercam", "gradcam++")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_pair(arch: str, device: torch.device, channels_last: bool):
    """Two checkpoints of one arch (different weights), as a TL/FT pair would be."""
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model(arch, num_classes=5).to(device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        models.append(model)
    return models


def run_arch(arch: str, args: argparse.Namespace, device: torch.device) -> dict:
    from pytorch_grad_cam import GradCAMPlusPlus, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    dtype = {"fp32": None, "bf16": torch.bfloat16}[args.dtype]
    models = build_pair(arch, device, channels_last=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    targets = torch.randint(0, 5, (args.batch,), generator=gen).to(device)
    n = args.batch

    def engine_maps():
        return [
            attribute_batch(m, images, targets, METHODS, autocast_dtype=dtype).maps for m in models
        ]

    def engine() -> None:
        a, b = engine_maps()
        metrics_by_method(a, b, METHODS, METRICS)

    maps = engine_maps()

    def metrics_only() -> None:
        metrics_by_method(maps[0], maps[1], METHODS, METRICS)

    def peer() -> None:
        wanted = [ClassifierOutputTarget(int(t)) for t in targets]
        for model in models:
            layer = model.get_submodule(model.spec.feature_layer)
            for cls in (LayerCAM, GradCAMPlusPlus):
                with cls(model=model, target_layers=[layer]) as cam:
                    cam(input_tensor=images, targets=wanted)

    @torch.no_grad()
    def floor() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            for model in models:
                model(images)

    t_engine = timed(engine, device, args.repeats)
    t_metrics = timed(metrics_only, device, args.repeats)
    t_floor = timed(floor, device, args.repeats)
    t_peer = timed(peer, device, max(1, args.repeats // 2)) if not args.skip_peer else None
    per_metric = {}
    if args.per_metric:
        for name in METRICS:

            def one(name: str = name) -> None:
                metrics_by_method(maps[0], maps[1], METHODS, [name])

            per_metric[name] = timed(one, device, args.repeats) / t_engine

        def order_only() -> None:  # the floor of any exact rank metric: one order per map
            for m in METHODS:
                ascending_order(torch.cat([maps[0][m], maps[1][m]]).flatten(1).float())

        per_metric["(pixel order alone)"] = timed(order_only, device, args.repeats) / t_engine
    return {
        "arch": arch,
        "engine_img_s": n / t_engine,
        "peer_img_s": n / t_peer if t_peer else None,
        "floor_img_s": n / t_floor,
        "speedup_vs_peer": t_peer / t_engine if t_peer else None,
        "engine_over_floor": t_engine / t_floor,
        "metrics_share": t_metrics / t_engine,
        "metric_shares": per_metric,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet50v2,densenet201")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--per-metric", action="store_true", help="time each metric alone")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    )
    print(
        f"device: {where}; torch {torch.__version__}; {args.size}x{args.size}, "
        f"batch {args.batch}, {args.dtype}; maps: {', '.join(METHODS)} for 2 checkpoints"
    )
    header = (
        f"{'arch':<24}{'camdrift img/s':>16}{'grad-cam img/s':>16}{'floor img/s':>13}"
        f"{'speed-up':>10}{'time/floor':>12}{'metrics':>9}"
    )
    print(header)
    results = []
    for arch in args.archs.split(","):
        r = run_arch(arch.strip(), args, device)
        results.append(r)
        peer = f"{r['peer_img_s']:.2f}" if r["peer_img_s"] else "-"
        speed = f"{r['speedup_vs_peer']:.2f}x" if r["speedup_vs_peer"] else "-"
        print(
            f"{r['arch']:<24}{r['engine_img_s']:>16.2f}{peer:>16}{r['floor_img_s']:>13.2f}"
            f"{speed:>10}{r['engine_over_floor']:>11.3f}x{r['metrics_share']:>8.1%}"
        )
        if r["metric_shares"]:
            shares = sorted(r["metric_shares"].items(), key=lambda kv: -kv[1])
            print("  each metric alone, share of camdrift's time:")
            for name, share in shares:
                print(f"    {name:<22}{share:>8.2%}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": where, "args": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
