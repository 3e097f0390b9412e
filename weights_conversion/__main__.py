"""python -m weights_conversion --src SRC --dst DST [--arch NAME] [--verify] [--bpe PATH]

SRC: a Hugging Face model folder (CLIPModel, CLIPVisionModel, Dinov2Model,
Dinov2WithRegistersModel, DINOv3ViTModel) or an OpenAI / open_clip CLIP checkpoint (.pt TorchScript
archive or state dict). DST: the folder `zsad_jax.backbones.load` reads. See docs/backbones.md.
"""

from __future__ import annotations

import argparse
import sys

from weights_conversion.tensors import ConversionError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weights_conversion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="HF model folder or OpenAI .pt/.bin file")
    parser.add_argument("--dst", required=True, help="output folder")
    parser.add_argument("--arch", default=None,
                        help="expected architecture (a name in zsad_jax.backbones.ARCHS)")
    parser.add_argument("--bpe", default=None,
                        help="OpenAI BPE vocab (bpe_simple_vocab_16e6.txt.gz) for OpenAI sources")
    parser.add_argument("--verify", action="store_true",
                        help="compare with the transformers model on random input (exit 1 if off)")
    parser.add_argument("--verify-size", type=int, default=None,
                        help="image size for --verify (default: the native size)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="--verify: max relative error (max abs diff / max abs output)")
    args = parser.parse_args(argv)

    from weights_conversion.convert import convert

    try:
        cfg = convert(args.src, args.dst, arch=args.arch, bpe=args.bpe)
    except (ConversionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"converted {args.src} -> {args.dst} ({cfg.family}, width {cfg.width}, "
          f"depth {cfg.depth}, patch {cfg.patch_size}, image {cfg.image_size})")
    if args.verify:
        from weights_conversion.verify import verify

        print("verify (transformers fp32 vs JAX fp32):")
        if not verify(args.src, args.dst, image_size=args.verify_size, tolerance=args.tolerance):
            print("verify FAILED", file=sys.stderr)
            return 1
        print("verify passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
