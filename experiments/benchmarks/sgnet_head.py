"""Cost of SGNet's trainable part at the paper's size, without the frozen CLIP towers.

    python experiments/benchmarks/sgnet_head.py                 # batch 8, all GPR W2 modes
    python experiments/benchmarks/sgnet_head.py --batch 2 --iters 2

Paper size: 37x37 patch grid (ViT-L/14 at 518), tapped width D = 1024, C_l = 768, N = 20
gravitons, K = 4 GIN stages. Random inputs. Times forward + backward (jax.value_and_grad, jit)
of (a) the GIN + decoding + graviton head (`SGNetHead`), (b) GPR (`gpr_loss_batch`) for K stages
in each W2 mode. Prints markdown table rows.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp

from zsad_jax.methods.sgnet import gpr
from zsad_jax.methods.sgnet.modules import SGNetHead

GRID, WIDTH, C_L, N, K = 37, 1024, 768, 20, 4


def timed(fn, iters: int) -> float:
    jax.block_until_ready(fn())     # compile
    start = time.perf_counter()
    for _ in range(iters):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / iters


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    b, p = args.batch, GRID * GRID
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    taps = tuple(jax.random.normal(keys[i], (b, p, WIDTH)) for i in range(K))
    text = jax.random.normal(keys[4], (2, C_L))
    head = SGNetHead(num_gravitons=N, num_stages=K, embed_dim=C_L, visual_dims=(C_L,) * (K + 1),
                     decoder_dim=C_L, grid=(GRID, GRID))
    params = jax.jit(head.init)(keys[5], taps, text)["params"]

    def head_loss(params):
        logits, gravitons, _ = head.apply({"params": params}, taps, text)
        return jnp.mean(logits ** 2) + sum(jnp.mean(g) for g in gravitons)

    head_step = jax.jit(jax.value_and_grad(head_loss))
    print(f"machine: {platform.machine()}, {jax.devices()[0].device_kind}, batch {b}, "
          f"grid {GRID}x{GRID}, N={N}, K={K}")
    print("| what | ms / step (fwd + bwd) |\n| --- | --- |")
    print(f"| GIN + decoding + graviton head | {1e3 * timed(lambda: head_step(params), args.iters):.0f} |")
    f_v = jax.random.normal(keys[6], (b, p, C_L))
    gravitons = jax.random.normal(keys[7], (b, N, C_L))
    for mode in gpr.W2_MODES:
        options = gpr.GPROptions(w2=mode)

        def loss(f_v, text, g, options=options):
            return sum(gpr.gpr_loss_batch(f_v, text, g, options)[0] for _ in range(K))

        step = jax.jit(jax.value_and_grad(loss, argnums=(1, 2)))
        ms = 1e3 * timed(lambda step=step: step(f_v, text, gravitons), args.iters)
        print(f"| GPR x {K} stages, w2={mode} | {ms:.0f} |")


if __name__ == "__main__":
    main()
