"""CPU compilation in the background: sizes swap in as they are built and checked, padding stays bounded,
a wrong or failing build leaves eager serving, and (slow) real AOTInductor packages match eager."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from service.diffusion.sampling import Denoiser
from service.engine import compile as compile_module
from service.engine.background_compile import MAX_ABS_ERROR, MAX_ABS_ERROR_REDUCED, BackgroundCompiler
from service.engine.buckets import MAX_PADDING, BucketRunner, dense_bucket_sizes
from service.engine.compile import resolved_precision
from service.engine.engine import Engine
from service.engine.executor import compile_order
from service.engine.generation import GenerationSpec
from service.engine.packages import PackageSpec, model_digest
from service.engine.settings import EngineSettings, Precision
from service.model.store import LoadedModel, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_dense_sizes_bound_the_padding_share() -> None:
    sizes = dense_bucket_sizes(16)
    assert sizes == (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16)
    for max_batch in (1, 2, 7, 16, 64):
        sizes = dense_bucket_sizes(max_batch)
        assert sizes[0] == 1 and sizes[-1] == max_batch
        for rows in range(1, max_batch + 1):
            size = min(s for s in sizes if s >= rows)
            assert (size - rows) / size <= MAX_PADDING, (max_batch, rows, size)
    assert dense_bucket_sizes(16, max_padding=0) == tuple(range(1, 17))


def test_compile_order_is_largest_then_one_then_descending() -> None:
    assert compile_order((1, 2, 3, 4, 8, 16)) == (16, 1, 8, 4, 3, 2)
    assert compile_order((1,)) == (1,)


class Recorded:
    """A stand-in for a compiled network (the real ones are tested below): the eager network plus an
    offset, counting the batch sizes it was called at."""

    def __init__(self, eager: Denoiser, offset: float = 0.0) -> None:
        self.eager = eager
        self.offset = offset
        self.calls: list[int] = []

    def __call__(
        self, x_t: torch.Tensor, model_t: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.calls.append(x_t.shape[0])
        eps, v = self.eager(x_t, model_t, y)
        return eps + self.offset, v


class Builds:
    """A Builder whose sizes are released one by one by the test."""

    def __init__(self, eager: Denoiser, offset: float = 0.0, fail_at: int | None = None) -> None:
        self.compiled = Recorded(eager, offset)
        self.fail_at = fail_at
        self.built: list[int] = []
        self.cancelled = False
        self.gate = threading.Semaphore(0)

    def __call__(self, size: int) -> Denoiser:
        self.gate.acquire()
        if size == self.fail_at:
            raise RuntimeError("no C++ compiler")
        self.built.append(size)
        return self.compiled

    def cached(self, size: int) -> bool:
        return False

    def cancel(self) -> None:
        self.cancelled = True
        self.gate.release()


def inputs_for(model: LoadedModel):  # type: ignore[no-untyped-def]
    manifest = model.manifest
    shape = (manifest.image_channels, manifest.image_size, manifest.image_size)

    def inputs(rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(rows)
        return (
            torch.randn((rows, *shape), generator=generator),
            torch.rand((rows,), generator=generator) * 1000,
            torch.randint(0, 10, (rows,), generator=generator),
        )

    return inputs, shape


def test_sizes_swap_in_as_they_are_built_and_pad_within_the_share(tiny_model: LoadedModel) -> None:
    inputs, shape = inputs_for(tiny_model)
    eager = tiny_model.denoiser
    builds = Builds(eager)
    compiler = BackgroundCompiler(eager, builds, (4, 1, 3, 2), inputs)
    runner = BucketRunner(eager, (1, 2, 4), shape, torch.device("cpu"), exact=True, background=compiler)
    x_t, model_t, y = inputs(3)
    expected_eps, expected_v = eager(x_t, model_t, y)

    compiler.start()
    assert runner(x_t, model_t, y)[0] == 3 and builds.compiled.calls == []  # nothing built: eager, exact
    builds.gate.release()  # size 4 is built
    deadline = threading.Event()
    while 4 not in compiler.ready and not deadline.wait(0.01):
        pass
    # 3 rows pad to a compiled size only when the one they pad to is ready: 3 itself is not yet.
    assert runner(x_t, model_t, y)[0] == 3
    for _ in range(3):
        builds.gate.release()
    assert compiler.wait(30) and compiler.error is None
    assert builds.built == [4, 1, 3, 2] and compiler.ready == {1, 2, 3, 4}
    calls_before = len(builds.compiled.calls)
    size, eps, v = runner(x_t, model_t, y)
    assert size == 3 and builds.compiled.calls[calls_before:] == [3]
    torch.testing.assert_close(eps, expected_eps)
    assert v is not None and expected_v is not None
    torch.testing.assert_close(v, expected_v)


def test_a_size_padded_to_a_larger_compiled_size_returns_only_its_rows(tiny_model: LoadedModel) -> None:
    inputs, shape = inputs_for(tiny_model)
    eager = tiny_model.denoiser
    builds = Builds(eager)
    compiler = BackgroundCompiler(eager, builds, (8, 1), inputs)  # 7 rows pad to 8: 1/8 of the call
    runner = BucketRunner(eager, (1, 8), shape, torch.device("cpu"), exact=True, background=compiler)
    builds.gate.release()
    builds.gate.release()
    compiler.start()
    assert compiler.wait(30) and compiler.ready == {1, 8}
    x_t, model_t, y = inputs(7)
    size, eps, _ = runner(x_t, model_t, y)
    assert size == 8 and eps.shape[0] == 7
    torch.testing.assert_close(eps, eager(x_t, model_t, y)[0])


def test_a_compiled_network_that_disagrees_with_eager_never_serves(tiny_model: LoadedModel) -> None:
    inputs, shape = inputs_for(tiny_model)
    eager = tiny_model.denoiser
    builds = Builds(eager, offset=10 * MAX_ABS_ERROR)
    builds.gate.release()
    compiler = BackgroundCompiler(eager, builds, (2, 1), inputs)
    compiler.start()
    assert compiler.wait(30)
    assert compiler.ready == frozenset() and "differs from eager" in (compiler.error or "")
    runner = BucketRunner(eager, (1, 2), shape, torch.device("cpu"), exact=True, background=compiler)
    x_t, model_t, y = inputs(2)
    torch.testing.assert_close(runner(x_t, model_t, y)[1], eager(x_t, model_t, y)[0])
    assert builds.built == [2]  # it stopped at the first bad size


def test_reduced_precision_networks_are_checked_against_their_own_tolerance(tiny_model: LoadedModel) -> None:
    """A bf16 torso compiled differs from bf16 eager by ~0.016 (measured): accepted under the reduced-
    precision limit, refused under the fp32 one."""
    inputs, _ = inputs_for(tiny_model)
    eager = tiny_model.denoiser
    for tolerance, ready in ((MAX_ABS_ERROR_REDUCED, {1}), (MAX_ABS_ERROR, set())):
        builds = Builds(eager, offset=0.02)
        builds.gate.release()
        compiler = BackgroundCompiler(eager, builds, (1,), inputs, tolerance=tolerance)
        compiler.start()
        assert compiler.wait(30) and compiler.ready == ready


def test_a_failing_build_leaves_the_built_sizes_and_stops(tiny_model: LoadedModel) -> None:
    inputs, _ = inputs_for(tiny_model)
    eager = tiny_model.denoiser
    builds = Builds(eager, fail_at=1)
    for _ in range(2):
        builds.gate.release()
    compiler = BackgroundCompiler(eager, builds, (2, 1, 3), inputs)
    compiler.start()
    assert compiler.wait(30)
    assert compiler.ready == {2} and "no C++ compiler" in (compiler.error or "")


def test_stop_cancels_the_build_under_way(tiny_model: LoadedModel) -> None:
    inputs, _ = inputs_for(tiny_model)
    builds = Builds(tiny_model.denoiser)
    compiler = BackgroundCompiler(tiny_model.denoiser, builds, (2, 1), inputs)
    compiler.start()
    compiler.stop(timeout=30)
    assert builds.cancelled and compiler.done and compiler.ready == frozenset()


@pytest.mark.slow
def test_real_packages_match_eager_and_load_from_the_cache_on_restart(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """AOTInductor packages built in child processes serve the same images as eager (to one level of 255
    per pixel: compiled kernels reorder float sums, ~5e-6 on eps, which rounding may tip), and a restarted
    engine finds them in the cache and serves compiled from its first request. One batch size: each costs
    a minute or more of CI's two cores, and the fake builders above cover several sizes and padding."""
    cache = tmp_path / "compiled"
    settings = EngineSettings(max_batch=1, warmup_iterations=1, compile=True, compile_cache_dir=str(cache))
    model = load_model(tiny_model_dir)
    spec = GenerationSpec(model=model.name, class_label=3, steps=20, num_images=2, seed=11)

    eager_engine = Engine(model, EngineSettings(max_batch=1, warmup_iterations=1))
    eager_engine.start()
    try:
        assert eager_engine.wait_ready(120)
        eager = eager_engine.generate(spec, timeout=120)
    finally:
        eager_engine.stop()

    engine = Engine(load_model(tiny_model_dir), settings)
    engine.start()
    try:
        assert engine.wait_ready(120)
        assert engine.wait_compiled(900)
        assert engine.compiled_sizes() == {1}
        compiled = engine.generate(spec, timeout=120)
    finally:
        engine.stop()
    assert len(list(cache.glob("*.pt2"))) == 1
    for a, b in zip(eager.images, compiled.images, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1

    restarted = Engine(load_model(tiny_model_dir), settings)
    restarted.start()
    try:
        assert restarted.wait_ready(120)
        assert restarted.compiled_sizes() == {1}  # loaded during warm-up, before ready
    finally:
        restarted.stop()


def test_package_keys_name_everything_the_generated_code_depends_on(tiny_model_dir: Path) -> None:
    spec = PackageSpec(tiny_model_dir, "fp32", 2)
    digest = model_digest(tiny_model_dir, "model.safetensors")
    key = spec.key(4, digest)
    assert key == PackageSpec(tiny_model_dir, "fp32", 2).key(4, digest)
    others = {
        spec.key(8, digest),
        PackageSpec(tiny_model_dir, "bf16", 2).key(4, digest),
        PackageSpec(tiny_model_dir, "fp32", 1).key(4, digest),
        spec.key(4, "other weights"),
    }
    assert key not in others and len(others) == 4
    # The server's default precision is AUTO: it must find the packages a benchmark built as fp32 (on a
    # CPU without native bf16, as the tests resolve it).
    assert resolved_precision(Precision.AUTO, torch.device("cpu")) is Precision.FP32


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(compile_module, "native_bf16", lambda: True)
    assert compile_module.torso_dtype(Precision.AUTO, cpu) == torch.bfloat16
    assert resolved_precision(Precision.AUTO, cpu) is Precision.BF16
    assert compile_module.torso_dtype(Precision.FP32, cpu) == torch.float32  # asked for: kept
    assert compile_module.torso_dtype(Precision.AUTO, cuda) == torch.float16
    monkeypatch.setattr(compile_module, "native_bf16", lambda: False)
    assert compile_module.torso_dtype(Precision.AUTO, cpu) == torch.float32


def test_without_a_cpp_compiler_the_cpu_serves_eager_instead_of_failing_builds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A slim image has no g++: torch.compile cannot build there, so the engine does not try (one warning
    that says what to change), and it does not fall back to compiling at warm-up either."""
    cpu, settings = torch.device("cpu"), EngineSettings(compile=True)
    assert compile_module.compiles_in_background(settings, cpu) == (compile_module.cpp_compiler() is not None)
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    compile_module._warn_no_compiler.cache_clear()
    with caplog.at_level("WARNING"):
        assert not compile_module.compiles_in_background(settings, cpu)
    assert not compile_module.compiles_at_warm_up(settings, cpu)
    assert "DDPM_COMPILE=false" in caplog.text and "g++" in caplog.text
