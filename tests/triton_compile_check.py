"""Compile the CSA layer's Triton kernels for a GPU architecture, with no GPU present.

Run by tests/test_csa_fast.py in a fresh process (the tests' own process runs Triton's
interpreter, whose kernels cannot be compiled). Usage: python triton_compile_check.py 80 90
"""
from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from csa.nn import _csa_triton as kernels


def signatures(dt: str) -> list[tuple[object, dict[str, str], dict[str, object]]]:
    rows = {"order_ptr": "*i64", "nh_ptr": "*i64"}
    sizes = {"HW": "i32", "C": "i32"}
    search = (
        kernels._search_kernel,
        {"xt_ptr": f"*{dt}", "ku_ptr": f"*{dt}", **rows, "dmax_ptr": f"*{dt}", "arg_ptr": "*i64", **sizes,
         "USE_DOT": "constexpr", "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"},
        {"USE_DOT": dt == "fp32", "BM": kernels.BLOCK_M, "BN": kernels.BLOCK_N,
         "BK": kernels.BLOCK_K if dt == "fp32" else kernels.BLOCK_K_FLOAT64},
    )
    out = [search]
    for stable in (True, False):
        consts = {"STABLE": stable, "BC": 512}
        out.append((
            kernels._forward_kernel,
            {"xt_ptr": f"*{dt}", "out_ptr": f"*{dt}", "order_ptr": "*i64", "src_ptr": "*i64", "nh_ptr": "*i64",
             "dmax_ptr": f"*{dt}", "stats_ptr": f"*{dt}", **sizes, "STABLE": "constexpr", "BC": "constexpr"},
            consts,
        ))
        out.append((
            kernels._backward_kernel,
            {"gt_ptr": f"*{dt}", "gin_ptr": f"*{dt}", "xt_ptr": f"*{dt}", "out_ptr": f"*{dt}", "order_ptr": "*i64",
             "src_ptr": "*i64", "nh_ptr": "*i64", "dmax_ptr": f"*{dt}", "stats_ptr": f"*{dt}", **sizes,
             "STABLE": "constexpr", "BC": "constexpr"},
            consts,
        ))
    return out


def main(archs: list[int]) -> None:
    for arch in archs:
        for dt in ("fp32", "fp64"):
            for fn, sig, consts in signatures(dt):
                # The recurrences launch with the warp count the module picks for their block.
                warps = kernels._recurrence_warps(consts["BC"]) if "BC" in consts else 4
                compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                                          target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
                assert compiled.asm.get("cubin"), f"no machine code for {fn.__name__} on sm_{arch}"
                print(f"sm_{arch} {dt} {fn.__name__} {consts}: ok")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [90])
