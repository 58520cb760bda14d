"""Benchmark of the GAN training step against a plain PyTorch peer, side by side.

One full step (a D update then a G update, batch 64, 1 channel, 10 classes, z 128, the
reference architecture of ../shared/bench/torch_reference_gan.py beside the repository) at 32 and 64 px on
2 CPU threads, in rounds that alternate a JAX process and a PyTorch process
(`--channels-last`, the peer's faster layout), each timing for `--seconds`. Reported:

- steps/s and images/s of both (medians over rounds) and the ratio JAX / PyTorch, also as
  best round / best round (robust to other jobs slowing some rounds on a shared machine);
- achieved GFLOP/s of the JAX step (XLA's cost analysis of the compiled step x steps/s);
- compile time of the step: cold (empty persistent cache) and warm (a second process
  with the cache `bioaug.runtime.configure_jax` sets up);
- input pipeline: batches/s that `BatchLoader` gathers from memory-mapped .npy shards
  (`ShardedTiles`), as a multiple of the steps/s the train step consumes;
- generation: tiles/s of `sample_tiles` (batch 256) from an exported generator.

Every measurement runs in its own process pinned to `--threads` CPUs. `--small`: 32 px
only, one round of a few seconds (< 30 s on 2 cores); the PyTorch peer is skipped, with a
note, where torch is not importable (it is a dependency of this benchmark only:
`pip install torch==2.13.0`). Prints a table and, last, one JSON line.

    .venv/bin/python tests/benchmarks/bench_gan_step.py            # ~5 min
    .venv/bin/python tests/benchmarks/bench_gan_step.py --small
    .venv/bin/python tests/benchmarks/bench_gan_step.py --flag-ab  # XLA:CPU flag A/B
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
# The peer sits in shared/ beside the repository (override with BIOAUG_TORCH_PEER).
TORCH_PEER = Path(os.environ.get("BIOAUG_TORCH_PEER", HERE.parents[3] / "shared" / "bench" / "torch_reference_gan.py"))
BATCH, CLASSES, Z_DIM, CHANNELS = 64, 10, 128, 1
G_CHANNELS = {32: [256, 128, 64], 64: [256, 128, 64, 32]}
D_CHANNELS = {32: [64, 128, 256], 64: [32, 64, 128, 256]}
# An XLA flag that is already the default: setting XLA_FLAGS to it turns off the flags
# configure_jax would add (it leaves a user's XLA_FLAGS alone), for the A/B comparison.
NEUTRAL_XLA_FLAGS = "--xla_cpu_enable_fast_math=false"
FLAG_UNDER_TEST = "--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce"  # --flag-ab


def pin_threads(n: int) -> None:
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cpus[:n])
    except (AttributeError, OSError):
        pass


# ----------------------------------------------------------------------------- JAX worker
def jax_worker(a) -> dict:
    pin_threads(a.threads)
    t_proc = time.perf_counter()
    from bioaug.runtime import configure_jax

    configure_jax(a.cache)  # persistent compilation cache (+ XLA:CPU flags)
    import jax

    sys.path.insert(0, str(HERE.parents[1]))  # tests/: the reference gan section
    from gan_reference import gan_config

    res = a.res[0] if isinstance(a.res, list) else a.res
    # the reference network (conditional BN off), without DiffAugment, as the PyTorch peer
    cfg = gan_config(
        res,
        CHANNELS,
        CLASSES,
        batch_size=BATCH,
        z_dim=Z_DIM,
        g_channels=G_CHANNELS[res],
        d_channels=D_CHANNELS[res],
        diffaugment=[],
        seed=0,
    )
    g_def, step, state, (x, y, hyper), compile_s, flops = compiled_step(cfg)
    times = []
    t_end = time.perf_counter() + a.seconds
    while time.perf_counter() < t_end or len(times) < a.min_steps:
        t = time.perf_counter()
        state = step(state, x, y, hyper)
        jax.block_until_ready(state["step"])
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    out = dict(
        fw="jax",
        res=res,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        compile_s=compile_s,
        n_steps=len(times),
        steps_per_s=1 / med,
        images_per_s=BATCH / med,
        gflop_per_step=flops / 1e9,
        gflops=flops / 1e9 / med,
        process_s=time.perf_counter() - t_proc,
        devices=jax.device_count(),
        version=jax.__version__,
    )
    if a.extras:
        out.update(loader_bench(cfg, a))
        out.update(generation_bench(cfg, g_def, state, a))
    return out


def compiled_step(cfg):
    """The GAN's real train step for `cfg` on a random batch, compiled (timed, with XLA's FLOP
    count) and run once: (g_def, step, state, (x, y, hyper), compile_s, flops per step).
    Also used by gpu_check.py."""
    import jax
    import numpy as np

    from bioaug.gan.devices import make_mesh, shardings
    from bioaug.gan.state import init_train_state
    from bioaug.gan.step import cached_train_step, step_hyperparams

    mesh = make_mesh()
    g_def, _, state = init_train_state(cfg, mesh)
    step = cached_train_step(cfg, tuple(range(cfg.n_classes)), mesh)
    rng = np.random.default_rng(0)
    rep, bat = shardings(mesh)
    shape = (cfg.batch_size, cfg.tile_size, cfg.tile_size, cfg.channels)
    x = jax.device_put(rng.random(shape, dtype=np.float32), bat)
    y = jax.device_put(rng.integers(0, cfg.n_classes, cfg.batch_size).astype(np.int32), bat)
    hyper = jax.device_put(step_hyperparams(cfg), rep)
    t0 = time.perf_counter()
    compiled = step.lower(state, x, y, hyper, False).compile()  # the reference GAN has no R1
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    plain = lambda state, x, y, hyper: step(state, x, y, hyper, False)  # noqa: E731
    state = plain(state, x, y, hyper)
    jax.block_until_ready(state)
    return g_def, plain, state, (x, y, hyper), compile_s, flops


def loader_bench(cfg, a) -> dict:
    """Batches/s BatchLoader gathers from memory-mapped shards (4 .npy files)."""
    import numpy as np

    from bioaug.gan.input_pipeline import BatchLoader, ShardedTiles

    n_per, n_shards = (500, 2) if a.small else (2500, 4)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(1)
        paths, rows = [], []
        for i in range(n_shards):
            p = Path(tmp) / f"shard{i}.npy"
            np.save(p, rng.random((n_per, cfg.tile_size, cfg.tile_size, cfg.channels), dtype=np.float32))
            paths.append(p)
            rows.append(np.arange(0, n_per, 2))  # e.g. the train split's rows
        source = ShardedTiles.from_npys(paths, rows)
        labels = rng.integers(0, CLASSES, len(source))
        n = 40 if a.small else 400
        with BatchLoader(source, labels, BATCH, seed=0, prefetch=2) as loader:
            next(loader)
            t = time.perf_counter()
            for _ in range(n):
                next(loader)
            dt = time.perf_counter() - t
    return dict(loader_batches_per_s=n / dt, loader_tiles=len(source))


def generation_bench(cfg, g_def, state, a) -> dict:
    """tiles/s of sample_tiles (batch 256) from a generator written and loaded back."""
    import jax
    import numpy as np

    from bioaug.gan.devices import to_host
    from bioaug.gan.sample import load_generator, sample_tiles, write_generator

    params = jax.tree.map(lambda v: np.asarray(to_host(v)), state["ema"])
    stats = jax.tree.map(lambda v: np.asarray(to_host(v)), state["g"]["batch_stats"])
    meta = {
        "z_dim": cfg.z_dim,
        "n_classes": cfg.n_classes,
        "g_channels": list(cfg.g_channels),
        "out_channels": cfg.channels,
        "tile_size": cfg.tile_size,
        "class_names": [str(i) for i in range(cfg.n_classes)],
        "step": 1,
        "seed": 0,
    }
    with tempfile.TemporaryDirectory() as tmp:
        write_generator(Path(tmp) / "gen", params, stats, meta)
        gen = load_generator(Path(tmp) / "gen")
        sample_tiles(gen, 0, np.arange(256), batch_size=256)  # compile
        n = 256 if a.small else 2048
        t = time.perf_counter()
        tiles = sample_tiles(gen, 1, np.arange(n), batch_size=256)
        dt = time.perf_counter() - t
    assert tiles.shape == (n, cfg.tile_size, cfg.tile_size, cfg.channels)
    return dict(generate_tiles_per_s=n / dt)


# ----------------------------------------------------------------------------- driver
def run_json(cmd: list[str], env: dict | None = None, timeout: float = 900) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def jax_run(
    res: int, a, cache: str, *, extras: bool = False, seconds: float | None = None, xla_flags: str | None = None
) -> dict:
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    cmd = [
        sys.executable,
        str(HERE),
        "--worker",
        "--res",
        str(res),
        "--threads",
        str(a.threads),
        "--seconds",
        str(a.seconds if seconds is None else seconds),
        "--cache",
        cache,
        "--min-steps",
        str(a.min_steps),
    ]
    if extras:
        cmd.append("--extras")
    if a.small:
        cmd.append("--small")
    return run_json(cmd, env)


def torch_run(res: int, a) -> dict:
    cmd = [
        sys.executable,
        str(TORCH_PEER),
        "--res",
        str(res),
        "--threads",
        str(a.threads),
        "--channels-last",
        "--seconds",
        str(a.seconds),
        "--min-steps",
        str(a.min_steps),
    ]
    r = run_json(cmd)
    r["compile_s"] = r.get("first_call_s", float("nan"))
    return r


def med(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else float("nan")


def flag_ab(a, res: int) -> dict:
    """Interleaved runs of the step with and without the XLA:CPU flag under test."""
    rows: dict[str, list[dict]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(a.rounds):
            rows["with"].append(jax_run(res, a, cache, xla_flags=FLAG_UNDER_TEST))
            rows["without"].append(jax_run(res, a, cache, xla_flags=NEUTRAL_XLA_FLAGS))
    w, wo = med(rows["with"], "steps_per_s"), med(rows["without"], "steps_per_s")
    each = {k: ", ".join(f"{r['steps_per_s']:.3f}" for r in v) for k, v in rows.items()}
    print(f"{res} px steps/s: XLA_FLAGS={FLAG_UNDER_TEST} {w:.3f}  [{each['with']}]")
    print(f"{res} px steps/s: XLA_FLAGS={NEUTRAL_XLA_FLAGS} {wo:.3f}  [{each['without']}]")
    bw, bwo = (max(r["steps_per_s"] for r in rows[k]) for k in ("with", "without"))
    print(f"speed-up with the flag: {w / wo:.2f} (medians), {bw / bwo:.2f} (best rounds)")
    return {
        "res": res,
        "flag": FLAG_UNDER_TEST,
        "flag_ab_with_steps_per_s": w,
        "flag_ab_without_steps_per_s": wo,
        "flag_ab_speedup": w / wo,
        "flag_ab_speedup_best": bw / bwo,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="32 px, one short round (< 30 s)")
    ap.add_argument("--res", type=int, nargs="+", default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="timing per process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-steps", type=int, default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument(
        "--flag-ab", action="store_true", help="only compare the step (first --res) with / without FLAG_UNDER_TEST"
    )
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--extras", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.rounds = a.rounds or (1 if a.small else 3)
    a.seconds = a.seconds if a.seconds is not None else (1.0 if a.small else 15.0)
    a.min_steps = a.min_steps or (1 if a.small else 5)
    res_list = a.res or ([32] if a.small else [32, 64])

    if a.worker:
        print(json.dumps(jax_worker(a)))
        return
    if a.flag_ab:
        out = flag_ab(a, res_list[0])
        print(json.dumps(out))
        return

    have_torch = not a.no_torch and importlib.util.find_spec("torch") is not None and TORCH_PEER.exists()
    if not have_torch:
        why = (
            "--no-torch"
            if a.no_torch
            else "torch is not importable"
            if importlib.util.find_spec("torch") is None
            else f"{TORCH_PEER} is missing"
        )
        print(f"PyTorch peer skipped ({why}); install it with `pip install torch==2.13.0`")
    t_all = time.perf_counter()
    jax_rows: dict[int, list[dict]] = {r: [] for r in res_list}
    torch_rows: dict[int, list[dict]] = {r: [] for r in res_list}
    extras: dict = {}
    with tempfile.TemporaryDirectory() as cache:
        for rnd in range(a.rounds):
            for res in res_list:
                r = jax_run(res, a, cache, extras=(rnd == 0 and res == res_list[0]))
                r["cold"] = rnd == 0
                jax_rows[res].append(r)
                if rnd == 0 and res == res_list[0]:
                    extras = {k: r[k] for k in ("loader_batches_per_s", "generate_tiles_per_s", "loader_tiles")}
                if have_torch:
                    torch_rows[res].append(torch_run(res, a))
        # warm compile where the rounds did not give one (one round): a short extra process
        for res in res_list:
            if not any(not r["cold"] for r in jax_rows[res]):
                r = jax_run(res, a, cache, seconds=0.0)
                r["cold"] = False
                r["timing_only_compile"] = True
                jax_rows[res].append(r)

    out: dict = {
        "threads": a.threads,
        "batch": BATCH,
        "rounds": a.rounds,
        "seconds": a.seconds,
        "small": a.small,
        "torch": have_torch,
        "jax_version": jax_rows[res_list[0]][0]["version"],
        "xla_flags_added": jax_rows[res_list[0]][0]["xla_flags"],
    }
    print()
    print(
        f"GAN train step, batch {BATCH}, {a.threads} threads, medians of {a.rounds} interleaved "
        f"round(s) of {a.seconds:g} s"
    )
    hdr = (
        f"{'res':>4} {'JAX steps/s':>12} {'JAX img/s':>10} {'torch steps/s':>14} "
        f"{'ratio':>6} {'best/best':>9} {'GFLOP/step':>11} {'GFLOP/s':>8} {'compile cold':>13} "
        f"{'warm':>6}"
    )
    print(hdr)
    print("-" * len(hdr))
    for res in res_list:
        timed = [r for r in jax_rows[res] if not r.get("timing_only_compile")]
        js, ji = med(timed, "steps_per_s"), med(timed, "images_per_s")
        ts = med(torch_rows[res], "steps_per_s") if have_torch else float("nan")
        cold = med([r for r in jax_rows[res] if r["cold"]], "compile_s")
        warm = med([r for r in jax_rows[res] if not r["cold"]], "compile_s")
        gflop, gflops = med(timed, "gflop_per_step"), med(timed, "gflops")
        ratio = js / ts if have_torch else float("nan")
        # On a shared machine a round can be slowed by other jobs: the best round of each
        # (the least disturbed) gives a second, more robust ratio.
        best = (
            max(r["steps_per_s"] for r in timed) / max(r["steps_per_s"] for r in torch_rows[res])
            if have_torch
            else float("nan")
        )
        print(
            f"{res:>4} {js:>12.3f} {ji:>10.1f} {ts:>14.3f} {ratio:>6.2f} {best:>9.2f} "
            f"{gflop:>11.2f} {gflops:>8.1f} {cold:>12.2f}s {warm:>5.2f}s"
        )
        out.update(
            {
                f"jax_steps_per_s_{res}": js,
                f"jax_images_per_s_{res}": ji,
                f"gflop_per_step_{res}": gflop,
                f"gflops_{res}": gflops,
                f"compile_cold_s_{res}": cold,
                f"compile_warm_s_{res}": warm,
                f"jax_steps_per_s_all_{res}": [round(r["steps_per_s"], 4) for r in timed],
            }
        )
        if have_torch:
            out.update(
                {
                    f"torch_steps_per_s_{res}": ts,
                    f"torch_images_per_s_{res}": med(torch_rows[res], "images_per_s"),
                    f"ratio_{res}": ratio,
                    f"ratio_best_{res}": best,
                    f"torch_steps_per_s_all_{res}": [round(r["steps_per_s"], 4) for r in torch_rows[res]],
                }
            )
    res0 = res_list[0]
    consume = out[f"jax_steps_per_s_{res0}"]
    loader_x = extras["loader_batches_per_s"] / consume
    out.update(
        loader_batches_per_s=extras["loader_batches_per_s"],
        loader_multiple=loader_x,
        generate_tiles_per_s=extras["generate_tiles_per_s"],
        res_extras=res0,
        wall_s=time.perf_counter() - t_all,
    )
    print(
        f"input pipeline ({res0} px, memory-mapped shards, {extras['loader_tiles']} tiles): "
        f"{extras['loader_batches_per_s']:.1f} batches/s = {loader_x:.0f}x what the step consumes"
    )
    print(f"generation ({res0} px, sample_tiles batch 256): {extras['generate_tiles_per_s']:.0f} tiles/s")
    if not have_torch:
        print("ratio: n/a (no PyTorch peer)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
