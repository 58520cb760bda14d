"""What every stage shares: logging, progress, atomic writes and JAX set-up."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("bioaug")


class BioaugError(Exception):
    """An error in the user's input or configuration, with a message that names the culprit."""


class _BarSafeHandler(logging.StreamHandler):
    """Console log lines written through tqdm, so they do not collide with a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class _ProgressToLog:
    """A file-like sink for tqdm that turns its updates into log lines (off a terminal)."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            self.logger.info("progress %s", text)

    def flush(self) -> None:
        pass


PROGRESS_LOG_INTERVAL_S = 30.0


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to the rule's log file (which is what survives on a cluster)."""
    handlers: list[logging.Handler] = [_BarSafeHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    # absl/orbax are chatty at INFO; keep the log about our own progress.
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def progress(iterable=None, *, total: int | None = None, desc: str = ""):
    """A tqdm bar on a terminal; off a terminal (a cluster job, Snakemake's log) the same
    progress and ETA as a log line every PROGRESS_LOG_INTERVAL_S seconds."""
    from tqdm.auto import tqdm

    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, leave=False)
    return tqdm(iterable, total=total, desc=desc, file=_ProgressToLog(log), mininterval=PROGRESS_LOG_INTERVAL_S,
                maxinterval=PROGRESS_LOG_INTERVAL_S, ascii=True, ncols=100, leave=True)  # fmt: skip


def log_devices(logger: logging.Logger | None = None) -> None:
    """Which platform and devices JAX runs on (so an HPC engineer can confirm the GPU was used)."""
    import jax

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    (logger or log).info(
        "JAX %s on %s: %d device(s) (%s), %d process(es)", jax.__version__, devices[0].platform,
        len(devices), ", ".join(kinds), jax.process_count(),
    )  # fmt: skip


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling path; move it onto `path` only if the block succeeds.

    Works for files and directories, so a killed job never leaves something that looks
    complete to Snakemake or to the next stage.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


# XLA:CPU flags that configure_jax adds when JAX runs on the CPU and the user has not set
# XLA_FLAGS: matmuls and reductions in YNNPACK, convolutions in XLA's own kernels, which made
# the GAN step ~1.3-1.5x faster (measurements: tests/benchmarks/README.md, "XLA:CPU flags").
# It changes how XLA compiles, not what it computes (beyond float rounding). An unknown
# fusion type aborts XLA at start-up, so the flags are set only for the jaxlib versions
# they were measured with.
XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce",)
XLA_CPU_FLAGS_JAXLIB = ("0.10.",)  # jaxlib version prefixes the flags are known to suit


def _jax_platform_is_cpu() -> bool:
    """Whether JAX will use the CPU, decided without starting a backend.

    JAX_PLATFORMS (or jax_platforms) when set; otherwise CPU unless an accelerator plugin
    (a `jax_plugins` entry point such as the CUDA or ROCm plugin, or libtpu) is installed.
    """
    import importlib.metadata
    import importlib.util

    import jax

    chosen = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    if chosen:
        return chosen.split(",")[0].strip().lower() == "cpu"
    try:
        plugins = list(importlib.metadata.entry_points(group="jax_plugins"))
    except Exception:  # a broken installation's metadata: assume an accelerator may exist
        return False
    return not plugins and importlib.util.find_spec("libtpu") is None


def configure_jax(cache_dir: str | os.PathLike | None = None) -> None:
    """Enable JAX's persistent compilation cache so later jobs skip most compile time,
    and add XLA_CPU_FLAGS when JAX will run on the CPU.

    JAX picks the device itself (GPU/TPU when present, else CPU); nothing here assumes one.
    Call it before the first JAX computation: XLA reads XLA_FLAGS when JAX starts its
    backend (not at `import jax`), so the flags still take effect after an import, but not
    after a computation; then (or where the user set XLA_FLAGS) they are left alone.
    """
    import jax
    from jax._src import xla_bridge

    on_cpu = _jax_platform_is_cpu()  # scans the installed plugins: once per job
    if cache_dir:
        cache_dir = Path(cache_dir).resolve()
        cache_dir.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        if on_cpu:
            # JAX's default also turns on XLA's GPU autotune cache, whose folder (an absolute
            # path inside cache_dir) enters every cache key: then a copied or moved results/
            # (or another working folder sharing the cache) misses every entry. It does
            # nothing on the CPU.
            jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    if "XLA_FLAGS" in os.environ:
        return  # the user's choice
    if xla_bridge.backends_are_initialized():
        log.debug("JAX backend already started: XLA:CPU flags not applied")
        return
    import jaxlib

    version = getattr(jaxlib, "__version__", "") or getattr(getattr(jaxlib, "version", None), "__version__", "")
    if XLA_CPU_FLAGS and version.startswith(XLA_CPU_FLAGS_JAXLIB) and on_cpu:
        os.environ["XLA_FLAGS"] = " ".join(XLA_CPU_FLAGS)


JAX_CACHE_DIR = Path("results/.jax-cache")  # JAX_COMPILATION_CACHE_DIR, where set, replaces it


def jax_cache_dir() -> Path:
    """The workflow's persistent compilation cache: JAX's own JAX_COMPILATION_CACHE_DIR where the
    user set it (one cache shared by several working folders, e.g. on a cluster's scratch),
    else results/.jax-cache in the working folder."""
    return Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or JAX_CACHE_DIR)


@contextlib.contextmanager
def stage(smk, *, uses_jax: bool = False, distributed: bool = False):
    """Run a Snakemake `script:` body: log to the rule's log, turn our errors into clean exits.

    `uses_jax`: set JAX up and log its devices (`distributed`: the stage joins a multi-process
    run first, and logs the devices itself after that).

    A BioaugError (bad input or config) is logged as one readable line naming the problem
    and the job fails with exit status 1; anything else is logged with its traceback.
    """
    setup_logging(smk.log[0] if smk.log else None)
    name = getattr(smk, "rule", "stage")
    log.info("rule %s, wildcards %s", name, dict(smk.wildcards.items()))
    if uses_jax:
        configure_jax(jax_cache_dir())
        if not distributed:
            log_devices()
    try:
        yield
    except BioaugError as err:
        log.error("%s failed: %s", name, err)
        sys.exit(1)
    except Exception:
        log.exception("%s failed", name)
        raise
