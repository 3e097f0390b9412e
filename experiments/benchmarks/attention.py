"""Speed of the towers' attention implementations (`zsad_jax.backbones.attention`).

    python experiments/benchmarks/attention.py [--tokens 1372] [--heads 16] [--head_dim 64]
        [--batch 1] [--dtype float32|bfloat16] [--repeats 12] [--impl recompute --impl probs ...]

For each implementation: the forward, and the gradient of a fixed projection of the output with
respect to q, k and v (forward + backward), each jitted; the minimum over `--repeats` calls after
a warm-up call, in milliseconds. The defaults are one layer of CLIP ViT-L/14 at 518 with two
inserted tokens (VisualAD: 37 x 37 patches + 3 = 1372 tokens).
"""

from __future__ import annotations

import argparse
import os
import time


def _best_ms(fn, *args, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def bench(impl: str, tokens: int, heads: int, head_dim: int, batch: int, dtype: str,
          repeats: int) -> dict:
    """{"impl", "forward_ms", "forward_backward_ms"} of one implementation."""
    import jax
    import jax.numpy as jnp

    from zsad_jax.backbones.attention import attention

    keys = jax.random.split(jax.random.key(0), 4)
    shape = (batch, tokens, heads, head_dim)
    q, k, v = (jax.random.normal(key, shape).astype(dtype) for key in keys[:3])
    projection = jax.random.normal(keys[3], shape)

    def forward(q, k, v):
        return attention(q, k, v, False, impl)

    def objective(q, k, v):
        return jnp.sum(forward(q, k, v).astype(jnp.float32) * projection)

    grad = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))
    return {"impl": impl,
            "forward_ms": _best_ms(jax.jit(forward), q, k, v, repeats=repeats),
            "forward_backward_ms": _best_ms(grad, q, k, v, repeats=repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1372)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--impl", action="append", default=None,
                        help="implementation (repeatable; default: xla, probs, recompute)")
    args = parser.parse_args()

    import jax

    print(f"# {jax.devices()[0].device_kind} | jax {jax.__version__} | {args.batch} x {args.tokens} "
          f"tokens, {args.heads} heads of {args.head_dim}, {args.dtype} | load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| implementation | forward ms | forward + backward ms |")
    print("| --- | --- | --- |")
    for impl in args.impl or ["xla", "probs", "recompute"]:
        row = bench(impl, args.tokens, args.heads, args.head_dim, args.batch, args.dtype,
                    args.repeats)
        print(f"| `{impl}` | {row['forward_ms']:.0f} | {row['forward_backward_ms']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
