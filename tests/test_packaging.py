"""Packaging: the repo's `kernels/` folder never shadows Hugging Face's `kernels` package, and the venv that
`make env` builds is exactly the lock.

transformers 5.25 imports Hugging Face's `kernels` from `transformers.activations`; when a folder named
`kernels` with an `__init__.py` sat at the repo root, every `python -m ...` and pytest run from the root
imported ours instead and died with "cannot import name 'CUDAProperties' from 'kernels'".
"""

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "constraints" / "cpu.lock"


def _probe_from_repo_root(code: str) -> dict:
    # `python -c` puts the current directory first on sys.path, as `python -m` and pytest's rootdir do.
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _in_repo_kernels_folder(path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(REPO / "kernels")


def test_repo_kernels_folder_is_not_a_package():
    assert not (REPO / "kernels" / "__init__.py").exists(), "kernels/ must stay a plain folder (no __init__.py)"
    assert (REPO / "kernels" / "mmr1_kernels" / "__init__.py").exists()


def test_find_spec_kernels_from_repo_root_is_not_ours():
    info = _probe_from_repo_root(
        "import importlib.util, json\n"
        "s = importlib.util.find_spec('kernels')\n"
        "print(json.dumps(None if s is None else {'origin': s.origin,"
        " 'locations': list(s.submodule_search_locations or [])}))"
    )
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        # Hugging Face's package is installed: it must be what `kernels` resolves to, from the repo root too.
        assert info is not None and info["origin"] is not None, info
        assert not _in_repo_kernels_folder(info["origin"]), f"`kernels` resolves to the repo's folder: {info}"
        assert Path(info["origin"]).resolve().is_relative_to(Path(dist.locate_file("")).resolve()), info
    else:
        # Not installed: at most an empty namespace package, never a regular package of ours.
        assert info is None or info["origin"] is None, info


def test_transformers_activations_import_from_repo_root():
    # The import that failed on a fresh clone with transformers 5.25.
    info = _probe_from_repo_root(
        "import json, transformers.activations, transformers\n"
        "print(json.dumps({'transformers': transformers.__version__}))"
    )
    assert info["transformers"]


def test_mmr1_kernels_imports_from_repo_root():
    info = _probe_from_repo_root(
        "import json, mmr1_kernels\n"
        "print(json.dumps({'file': mmr1_kernels.__file__, 'has_loss': hasattr(mmr1_kernels, 'fused_grpo_loss')}))"
    )
    assert info["has_loss"]
    assert Path(info["file"]).resolve() == REPO / "kernels" / "mmr1_kernels" / "__init__.py"


def _lock_lines():
    return sorted(line.strip() for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#"))


def test_lock_pins_every_line_exactly():
    lines = _lock_lines()
    assert lines, "empty lock"
    bad = [line for line in lines if "==" not in line or any(c in line for c in "<>~!@ ")]
    assert not bad, f"lock lines that are not exact pins: {bad}"
    names = [line.split("==")[0].lower() for line in lines]
    assert len(names) == len(set(names)), "a package is pinned twice"
    for required in ("torch", "triton", "megatron-core", "transformers", "pip", "setuptools"):
        assert required in names, required


@pytest.mark.skipif(Path(sys.prefix).resolve() != (REPO / ".venv").resolve(),
                    reason="compares the lock with the repo's .venv (built by `make env`); this is another interpreter")
def test_make_env_venv_equals_the_lock():
    proc = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    frozen = sorted(line.strip() for line in proc.stdout.splitlines() if line.strip())
    lock = _lock_lines()
    missing, extra = sorted(set(lock) - set(frozen)), sorted(set(frozen) - set(lock))
    assert not missing and not extra, f"venv differs from {LOCK.name}: missing {missing}, not in lock {extra}"


def _pins(path: Path) -> dict:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1] for line in lines}


def test_gpu_lock_satisfies_the_gpu_extra_and_megatron_core_pins():
    """constraints/gpu.lock is exact and meets setup.py's `gpu` extra, SGLang 0.5.23's torch pin and megatron-core
    0.16.1's Transformer Engine range (>=2.9,<2.12, from megatron-core's own metadata)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    gpu_lock = REPO / "constraints" / "gpu.lock"
    text = gpu_lock.read_text()
    pins = _pins(gpu_lock)
    assert all(v and not any(c in v for c in "<>=~! ") for v in pins.values())
    setup_src = (REPO / "setup.py").read_text()
    extra = setup_src[setup_src.index('"gpu": ['):setup_src.index('"dev": [')]
    reqs = [Requirement(line.split('"')[1]) for line in extra.splitlines()[1:] if line.strip().startswith('"')]
    assert {r.name for r in reqs} >= {"sglang", "sglang-router", "nvidia-dali-cuda120", "transformer-engine"}
    for r in reqs:
        assert not (r.name == "sglang" and r.extras), "sglang[all] pulls the diffusion stack"
        assert Version(pins[r.name]) in r.specifier, (r, pins[r.name])
    assert pins["torch"] == "2.14.1" and pins["megatron-core"] == "0.16.1"
    assert Version(pins["transformer-engine"]) in Requirement("te>=2.9,<2.12").specifier
    assert "flash-attn" not in pins, "flash-attn is unused: it must not be installed"
    build = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("# build: ")]
    assert build == [f"transformer-engine-torch=={pins['transformer-engine']}"]
    makefile = (REPO / "Makefile").read_text()
    assert "-r $(GPU_LOCK)" in makefile and "--no-build-isolation" in makefile


def test_gpu_check_wheels_are_pinned_to_the_cpu_lock():
    """The wheels carried to a bare GPU image for `make gpu-check` are the versions the CPU suite tested."""
    wheels = _pins(REPO / "tools" / "gpu_wheels.txt")
    lock = _pins(LOCK)
    assert wheels and "megatron-core" in wheels
    assert {name: (v, lock.get(name)) for name, v in wheels.items() if lock.get(name) != v} == {}


def _extra(name: str) -> list:
    """setup.py's extra ``name`` as parsed requirements (one quoted requirement a line)."""
    from packaging.requirements import Requirement

    src = (REPO / "setup.py").read_text()
    block = src[src.index(f'"{name}": ['):]
    block = block[:block.index("],")]
    return [Requirement(line.split('"')[1]) for line in block.splitlines()[1:] if line.strip().startswith('"')]


def test_trl_lock_is_the_trl_extra_layered_on_the_cpu_lock():
    """constraints/trl-cpu.lock pins setup.py's `trl` extra exactly and adds only what the CPU lock lacks (it is
    installed --no-deps beside the venv, so a package in both at another version would shadow the tested one);
    `make bench-trl` installs it into its own folder and `make test` / `make env` never do."""
    from packaging.version import Version

    trl_lock, cpu = _pins(REPO / "constraints" / "trl-cpu.lock"), _pins(LOCK)
    assert all(v and not any(c in v for c in "<>=~!@ ") for v in trl_lock.values()), trl_lock
    reqs = _extra("trl")
    assert {r.name for r in reqs} >= {"trl", "accelerate", "datasets"}
    for r in reqs:
        assert r.name in trl_lock, f"{r.name} of the trl extra is not in trl-cpu.lock"
        assert Version(trl_lock[r.name]) in r.specifier, (r, trl_lock[r.name])
    trl = next(r for r in reqs if r.name == "trl")
    assert str(trl.specifier).startswith("=="), "the trl extra pins TRL exactly"
    assert sorted(set(trl_lock) & set(cpu)) == [], "already in cpu.lock: would shadow the locked version"
    assert not {"torch", "torchvision", "transformers", "vllm"} & set(trl_lock)
    makefile = (REPO / "Makefile").read_text()
    assert "--no-deps --no-compile --upgrade --target $(TRL_DIR) -r $(TRL_LOCK)" in makefile
    for target in ("env:", "test:", "test-fast:", "lint:"):
        line = next(x for x in makefile.splitlines() if x.startswith(target))
        assert "TRL" not in line, line


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL is not installed (make bench-trl installs it)")
def test_installed_trl_is_the_locked_one():
    trl_lock = _pins(REPO / "constraints" / "trl-cpu.lock")
    for name in ("trl", "accelerate", "datasets"):
        assert importlib.metadata.version(name) == trl_lock[name], name
