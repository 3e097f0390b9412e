"""VisualAD train-step memory with and without remat (XLA's buffer assignment, no real weights).

    python experiments/benchmarks/visualad_memory.py [--arch clip-vit-l14-336] [--size 518]
        [--batch 8] [--dtype float32|bfloat16]

Compiles the gradient of the VisualAD loss with respect to the trainable head (tokens, SCA, SAF),
the frozen tower passed as a constant argument, for abstract inputs (jax.ShapeDtypeStruct: nothing
is allocated), and prints XLA's memory analysis (temporary buffers, arguments) for each
`config.train.remat` policy ("none", "dots", "full"). On a CPU host this is the CPU compiler's
buffer assignment, which drops optimization barriers and with them most of what remat saves: a
guide to the GPU numbers, not a measurement of them (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp


def analyse(arch: str, size: int, batch: int, dtype: str, remat: str) -> dict:
    from zsad_jax import backbones, config_lib, methods

    depth = backbones.get_arch(arch).depth
    layers = tuple(sorted({max(1, round(depth * q / 4)) for q in (1, 2, 3, 4)}))   # ViT-L: 6..24
    config = config_lib.load_config("visualad.py", {
        "backbones.vit.arch": arch, "backbones.vit.weights": "", "backbones.vit.image_size": size,
        "backbones.vit.layers": layers, "train.remat": remat, "train.compute_dtype": dtype})
    method = methods.build(config)
    params = jax.eval_shape(method.init, jax.random.key(0))
    batch_shapes = {"images": {"vit": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)},
                    "masks": jax.ShapeDtypeStruct((batch, size, size), jnp.float32),
                    "labels": jax.ShapeDtypeStruct((batch,), jnp.int32)}

    def grad_head(head, backbone, batch, rng):
        return jax.grad(lambda h: method.loss({"backbones": {"vit": backbone}, "head": h}, batch,
                                              rng)[0])(head)

    start = time.perf_counter()
    compiled = jax.jit(grad_head).lower(params["head"], params["backbones"]["vit"], batch_shapes,
                                        jax.random.key(0)).compile()
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    gib = 2 ** 30
    return dict(remat=remat, compile_s=round(seconds, 1),
                temp_gib=round(mem.temp_size_in_bytes / gib, 2),
                argument_gib=round(mem.argument_size_in_bytes / gib, 2),
                output_gib=round(mem.output_size_in_bytes / gib, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="clip-vit-l14-336")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    print(f"backend {jax.default_backend()}, {args.arch} at {args.size}, batch {args.batch}, {args.dtype}")
    for remat in ("none", "dots", "full"):
        print(analyse(args.arch, args.size, args.batch, args.dtype, remat), flush=True)


if __name__ == "__main__":
    main()
