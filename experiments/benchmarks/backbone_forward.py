"""Images/s of the Flax vision tower vs the transformers PyTorch tower, same weights and input.

    python experiments/benchmarks/backbone_forward.py                       # both default cases
    python experiments/benchmarks/backbone_forward.py --case vit-l14-518 --dtype bfloat16

Cases: `vit-b16-224` (CLIP ViT-B/16 at 224, batch 8) and `vit-l14-518` (CLIP ViT-L/14@336 at 518,
batch 1, all 24 blocks, 4 tapped layers). Random weights (no download), identical in both
frameworks (converted with weights_conversion). Prints a markdown table row per case, including
the max relative difference of the pooled output, so the speed is measured on a correct port.
On an accelerator, add `--mfu` to print model FLOPs utilization against `--peak-tflops`.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

CASES = {"vit-b16-224": ("clip-vit-b16", 224, 8), "vit-l14-518": ("clip-vit-l14-336", 518, 1)}


def vit_flops(cfg, size: int) -> float:
    """Forward FLOPs (2 per multiply-add) of the vision tower at `size`."""
    t = (size // cfg.patch_size) ** 2 + 1
    d, m = cfg.width, cfg.mlp_dim
    per_block = 2 * t * (4 * d * d + 2 * d * m) + 2 * 2 * t * t * d
    return cfg.depth * per_block + 2 * (t - 1) * 3 * cfg.patch_size ** 2 * d


def timed(fn, iters: int) -> float:
    fn()  # warm-up / compile
    fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def run_case(name: str, iters: int, dtype: str, torch_too: bool):
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from weights_conversion import hf
    from weights_conversion.verify import hf_clip_vision_config
    from zsad_jax import backbones

    arch_name, size, batch = CASES[name]
    arch = backbones.ARCHS[arch_name]
    torch.manual_seed(0)
    config = hf_clip_vision_config(arch)
    torch_model = transformers.CLIPVisionModelWithProjection(config).eval()
    tensors = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    cfg, params = hf.convert_hf(config.to_dict(), tensors, name)
    del tensors
    jdtype = jnp.dtype(dtype)
    model = backbones.build(cfg, dtype=jdtype)
    params = jax.device_put(jax.tree_util.tree_map(jnp.asarray, params))
    layers = (6, 12, 18, 24) if cfg.depth >= 24 else (3, 6, 9, 12)
    images_np = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
    images = jax.device_put(jnp.asarray(images_np))

    @jax.jit
    def forward(p, x):
        out = model.apply({"params": p}, x, layers=layers, method="encode_image")
        return out.layers, out.pooled

    jax_s = timed(lambda: jax.block_until_ready(forward(params, images)), iters)
    pooled = np.asarray(forward(params, images)[1], np.float32)

    torch_s, err = float("nan"), float("nan")
    if torch_too:
        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        torch_model = torch_model.to(tdtype)
        pixels = torch.from_numpy(images_np.transpose(0, 3, 1, 2).copy()).to(tdtype)

        def torch_forward():
            with torch.no_grad():
                res = torch_model.vision_model(pixel_values=pixels, output_hidden_states=True,
                                               interpolate_pos_encoding=size != cfg.image_size)
                return torch_model.visual_projection(res.pooler_output)

        torch_s = timed(torch_forward, iters)
        ref = torch_forward().float().numpy()
        err = float(np.abs(pooled - ref).max() / np.abs(ref).max())
    return dict(case=name, batch=batch, dtype=dtype, jax_ips=batch / jax_s,
                torch_ips=batch / torch_s, err=err, flops=vit_flops(cfg, size) * batch,
                jax_s=jax_s, device=str(jax.devices()[0].device_kind))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-torch", action="store_true", help="JAX only (e.g. on a GPU)")
    parser.add_argument("--mfu", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="peak dense bf16 TFLOP/s of the device (H100 SXM: 989)")
    args = parser.parse_args(argv)
    import jax
    print(f"# machine: {platform.machine()} {platform.processor() or ''}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    print("| case | batch | dtype | JAX images/s | PyTorch images/s | JAX / PyTorch | "
          "pooled rel. diff | MFU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for case in args.case or sorted(CASES):
        r = run_case(case, args.iters, args.dtype, not args.no_torch)
        mfu = (f"{r['flops'] / r['jax_s'] / (args.peak_tflops * 1e12):.1%}" if args.mfu else "")
        print(f"| {r['case']} | {r['batch']} | {r['dtype']} | {r['jax_ips']:.2f} | "
              f"{r['torch_ips']:.2f} | {r['jax_ips'] / r['torch_ips']:.2f}x | {r['err']:.1e} | "
              f"{mfu} |", flush=True)


if __name__ == "__main__":
    main()
