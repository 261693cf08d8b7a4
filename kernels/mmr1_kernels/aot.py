"""Ahead-of-time compilation of every Triton kernel of mmr1_kernels for a GPU target (default sm_90,
H100) on any machine: proves each kernel compiles at its production block sizes and dtypes, and
reports its static resources. Run as ``python -m mmr1_kernels.aot`` (prints one JSON line per kernel);
needs a process where triton was imported without TRITON_INTERPRET."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile


def all_specs(dtype: str = "bf16") -> list[dict]:
    from .fused_logprobs import aot_specs as logprob_specs  # (the package attribute is the function)
    from .levenshtein import aot_specs as levenshtein_specs

    # the Levenshtein kernel has no floating-point data: built once, reported under the bf16 run
    return logprob_specs(dtype) + (levenshtein_specs() if dtype == "bf16" else [])


def compile_all(arch: int = 90, dtype: str = "bf16") -> list[dict]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    out = []
    for spec in all_specs(dtype):
        fn = spec["kernel"]
        if not isinstance(fn, JITFunction):
            raise RuntimeError("AOT compilation needs triton imported without TRITON_INTERPRET=1")
        src = ASTSource(fn=fn, signature=spec["signature"], constexprs=spec["constexprs"])
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": spec["num_warps"]})
        md = k.metadata
        out.append(dict(
            kernel=fn.__name__, arch=f"sm_{arch}", dtype=dtype, constexprs=spec["constexprs"],
            num_warps=md.num_warps, shared_bytes=md.shared, cubin_bytes=len(k.asm.get("cubin", b"")),
            ptx_lines=k.asm["ptx"].count("\n"), **_ptxas_resources(k.asm["ptx"], arch),
        ))
    return out


def _ptxas_resources(ptx: str, arch: int) -> dict:
    """Registers per thread and spill bytes, from ``ptxas -v`` (the ptxas shipped in the triton wheel)."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        return {}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        arch_s = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        r = subprocess.run([ptxas, f"-arch={arch_s}", "-v", path, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True)
    text = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return dict(registers=int(regs.group(1)) if regs else None, spill_store_bytes=int(spill.group(1)) if spill else None)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mmr1_kernels.aot",
                                 description="Compile every Triton kernel of mmr1_kernels ahead of time for a GPU "
                                             "target (no GPU needed); one JSON line per kernel.")
    ap.add_argument("arch", nargs="?", type=int, default=90, help="CUDA compute capability as an integer (90 = H100)")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="floating-point data type")
    args = ap.parse_args(argv)
    for row in compile_all(args.arch, args.dtype):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
