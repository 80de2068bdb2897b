"""The model repository (Triton-like): what is on disk, what is loaded, what serves.

``DIR/<model>/manifest.yaml`` plus ``DIR/<model>/<version>/model.onnx``; a cascade is a
model directory whose manifest says ``platform: cascade`` and has no version directories.

Why it works the way it does:

* The directory is polled (a stat fingerprint per manifest and per version directory):
  plain copies, atomic renames and Kubernetes ConfigMap symlink swaps all show up, and
  nothing needs inotify.  A changed version is loaded only once its fingerprint is the
  same on two consecutive scans, so a version still being copied is not loaded half-way.
* A version loads in a worker thread (session, tokenizer, contract checks, warm-up), then
  swaps in on the event loop in one assignment: a request resolves either the old or the
  new version, never a half-loaded one.  The old version is retired, not closed: it keeps
  answering the requests that already hold it (a lease count) and its batcher drains its
  queue, and only then is it unloaded.  So a swap fails no call.
* A version that fails to load is FAILED with the reason (ListModels, a log line and a
  metric) and changes nothing else: other models keep serving, and an older version of
  the same model keeps serving until a newer one loads.
* Per-model health (``safeguards.v1.ClassifierService/<model>``) is published through a
  callback, so this module needs no gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from services.classifier import manifest as mf
from services.classifier.batcher import Batcher, BatchPolicy
from services.classifier.runtime import OnnxModel, RuntimeOptions
from services.classifier.stats import ClassifierStats
from services.common.errors import ConfigError, InvalidArgument, NotFound, Unavailable

log = logging.getLogger("safeguards.classifier.repository")

LOADING = "LOADING"
READY = "READY"
FAILED = "FAILED"
UNLOADED = "UNLOADED"

HealthCallback = Callable[[str, bool], Awaitable[None]]


class LoadedVersion:
    """A version that can serve: its model, its batcher, and who is using it."""

    def __init__(self, manifest: mf.ModelManifest, version: int, model: OnnxModel, batcher: Batcher) -> None:
        self.name = manifest.name
        self.manifest = manifest
        self.version = version
        self.model = model
        self.featurizer = model.featurizer
        self.batcher = batcher
        self.provider = model.provider
        self.leases = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def acquire(self) -> LoadedVersion:
        self.leases += 1
        self._idle.clear()
        return self

    def release(self) -> None:
        self.leases -= 1
        if self.leases <= 0:
            self.leases = 0
            self._idle.set()

    def __enter__(self) -> LoadedVersion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def retire(self) -> None:
        """Wait for every request holding this version, then stop its batcher."""
        await self._idle.wait()
        await self.batcher.close()


@dataclass
class VersionRecord:
    version: int
    state: str = UNLOADED
    error: str = ""
    provider: str = ""
    fingerprint: tuple | None = None  # of the files the last load attempt read
    loaded: LoadedVersion | None = None
    loading: bool = False


@dataclass
class ModelRecord:
    name: str
    manifest: mf.Manifest | None = None  # last good manifest
    manifest_fp: tuple | None = None
    manifest_error: str = ""
    present: set[int] = field(default_factory=set)  # version directories seen on the last scan
    versions: dict[int, VersionRecord] = field(default_factory=dict)

    @property
    def serving(self) -> LoadedVersion | None:
        loaded = [r.loaded for r in self.versions.values() if r.loaded is not None]
        return max(loaded, key=lambda lv: lv.version) if loaded else None


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error: str = ""
    provider: str = ""


@dataclass(frozen=True)
class ModelStatus:
    """What ListModels reports for one model (protocol-free)."""

    name: str
    platform: str
    versions: list[VersionStatus]
    serving_version: int
    labels: list[str]
    shadow_models: list[str]
    max_batch_size: int
    max_sequence_length: int


class ModelRepository:
    def __init__(
        self,
        root: Path,
        runtime: RuntimeOptions,
        stats: ClassifierStats,
        *,
        queue_capacity: int = 1024,
        max_batch_s: float | None = None,
        first_stage_intra_op_threads: int = 0,
        poll_seconds: float = 2.0,
        wait_for_batch: bool = True,
        health: HealthCallback | None = None,
    ) -> None:
        self.root = root
        self.runtime = runtime
        self.stats = stats
        self.queue_capacity = queue_capacity
        self.max_batch_s = max_batch_s
        self.first_stage_intra_op_threads = first_stage_intra_op_threads  # 0: same as the others
        self.poll_seconds = poll_seconds
        # False: ignore max_queue_delay_ms (an idle model runs at once; see --batch-wait).
        self.wait_for_batch = wait_for_batch
        self._health = health
        self._published: dict[str, bool] = {}
        self._models: dict[str, ModelRecord] = {}
        self._seen: dict[tuple[str, int], tuple] = {}  # fingerprints of the previous scan (debounce)
        self._tasks: set[asyncio.Task] = set()
        self._poll_task: asyncio.Task | None = None
        self._reconcile_lock = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Load everything the policies select (failures are reported, not fatal), then poll."""
        if not self.root.is_dir():
            raise ConfigError(f"--models {self.root}: not a directory")
        await self.reconcile(initial=True)
        await self.settle(timeout=600)
        await self._publish()
        if self.poll_seconds > 0:
            self._poll_task = asyncio.create_task(self._poll(), name="model-repository-poll")

    async def stop(self) -> None:
        if self._poll_task:
            self._poll_task.cancel()
        retiring = []
        for rec in self._models.values():
            for r in rec.versions.values():
                if r.loaded is not None:
                    retiring.append(r.loaded.retire())
                    r.loaded = None
                    r.state = UNLOADED
        if retiring:  # bounded: a leaked lease must not hang shutdown
            await asyncio.wait([asyncio.ensure_future(c) for c in retiring], timeout=10)
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def settle(self, timeout: float = 30.0, unloads: bool = False) -> None:
        """Wait for the loads in flight (and unloads, which wait for their leases)."""
        deadline = time.monotonic() + timeout
        while True:
            pending = [t for t in self._tasks if not t.done() and (unloads or t.get_name().startswith("load:"))]
            if not pending or time.monotonic() >= deadline:
                return
            await asyncio.wait(pending, timeout=deadline - time.monotonic())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.reconcile()
            except Exception:  # a scan error must not stop future scans
                log.exception("model repository scan failed")

    # -- resolution -------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._models)

    def manifest(self, name: str) -> mf.Manifest:
        rec = self._models.get(name)
        if rec is None:
            raise NotFound(f"unknown model {name!r}; available models: {', '.join(self.names()) or '(none)'}")
        if rec.manifest is None:
            raise Unavailable(f"model {name!r} is not loadable: {rec.manifest_error}")
        return rec.manifest

    def acquire(self, name: str, version: int | None = None) -> LoadedVersion:
        """The version to run (serving or pinned), leased: release it when done (``with``)."""
        man = self.manifest(name)
        rec = self._models[name]
        if isinstance(man, mf.CascadeManifest):
            raise InvalidArgument(f"model {name!r} is a cascade and has no versions to pin")
        if version is None:
            lv = rec.serving
            if lv is None:
                raise Unavailable(f"model {name!r} has no ready version ({self._why_not_ready(rec)})")
            return lv.acquire()
        r = rec.versions.get(version)
        if r is None or r.loaded is None:
            loaded = sorted(v for v, x in rec.versions.items() if x.loaded is not None)
            raise NotFound(f"model {name!r} version {version} is not loaded; loaded versions: {loaded}")
        return r.loaded.acquire()

    def serving(self, name: str) -> LoadedVersion | None:
        rec = self._models.get(name)
        return rec.serving if rec else None

    @staticmethod
    def _why_not_ready(rec: ModelRecord) -> str:
        if rec.manifest_error:
            return rec.manifest_error
        states = [f"{v}: {r.state}{' ' + r.error if r.error else ''}" for v, r in sorted(rec.versions.items())]
        return "; ".join(states) or "no version directories"

    # -- status -------------------------------------------------------------------------

    def status(self) -> list[ModelStatus]:
        return [self._status(rec) for _, rec in sorted(self._models.items())]

    def _status(self, rec: ModelRecord) -> ModelStatus:
        man = rec.manifest
        if isinstance(man, mf.CascadeManifest):
            state, error = self._cascade_state(man)
            first = self._models.get(man.stages[0])
            first_man = first.manifest if first else None
            return ModelStatus(
                name=rec.name,
                platform=mf.CASCADE,
                versions=[VersionStatus(0, state, error, self.runtime.provider if state == READY else "")],
                serving_version=0,
                labels=list(first_man.labels) if isinstance(first_man, mf.ModelManifest) else [],
                shadow_models=list(man.shadow_models),
                max_batch_size=first_man.batching.max_batch_size if isinstance(first_man, mf.ModelManifest) else 0,
                max_sequence_length=(
                    first_man.inputs.max_sequence_length if isinstance(first_man, mf.ModelManifest) else 0
                ),
            )
        versions = [
            VersionStatus(v, r.state, r.error, r.provider if r.loaded is not None else "")
            for v, r in sorted(rec.versions.items())
        ]
        if man is None:  # never had a good manifest: every version directory failed with its error
            versions = [VersionStatus(v, FAILED, rec.manifest_error) for v in sorted(rec.present)] or [
                VersionStatus(0, FAILED, rec.manifest_error)
            ]
        serving = rec.serving
        return ModelStatus(
            name=rec.name,
            platform=man.platform if man else mf.ONNXRUNTIME,
            versions=versions,
            serving_version=serving.version if serving else 0,
            labels=list(man.labels) if isinstance(man, mf.ModelManifest) else [],
            shadow_models=list(man.shadow_models) if man else [],
            max_batch_size=man.batching.max_batch_size if isinstance(man, mf.ModelManifest) else 0,
            max_sequence_length=man.inputs.max_sequence_length if isinstance(man, mf.ModelManifest) else 0,
        )

    def _cascade_state(self, man: mf.CascadeManifest) -> tuple[str, str]:
        problems, loading = [], False
        for stage in man.stages:
            rec = self._models.get(stage)
            if rec is None:
                problems.append(f"stage {stage!r} is not in the repository")
            elif not isinstance(rec.manifest, mf.ModelManifest):
                problems.append(
                    f"stage {stage!r} is not an onnxruntime model"
                    if rec.manifest is not None
                    else f"stage {stage!r}: {rec.manifest_error}"
                )
            elif rec.serving is None:
                if any(r.loading or r.state == LOADING for r in rec.versions.values()):
                    loading = True
                else:
                    problems.append(f"stage {stage!r} has no ready version ({self._why_not_ready(rec)})")
        if problems:
            return FAILED, "; ".join(problems)
        return (LOADING, "") if loading else (READY, "")

    def cascade_state(self, man: mf.CascadeManifest) -> tuple[str, str]:
        """(LOADING | READY | FAILED, why not ready) of a cascade, from its stages."""
        return self._cascade_state(man)

    def is_serving(self, name: str) -> bool:
        rec = self._models.get(name)
        if rec is None:
            return False
        if isinstance(rec.manifest, mf.CascadeManifest):
            return self._cascade_state(rec.manifest)[0] == READY
        return rec.serving is not None

    # -- scanning and loading -----------------------------------------------------------------

    def _scan(self) -> dict[str, tuple[Path, tuple | None, dict[int, tuple]]]:
        """{model: (dir, manifest fingerprint, {version: fingerprint})} from the file system."""
        out: dict[str, tuple[Path, tuple | None, dict[int, tuple]]] = {}
        try:
            entries = sorted(self.root.iterdir())
        except OSError as exc:
            log.error("cannot scan model repository", extra={"models": str(self.root), "error": str(exc)})
            return {name: (self.root / name, rec.manifest_fp, {}) for name, rec in self._models.items()}
        for model_dir in entries:
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            manifest_fp = _stat_fp(model_dir / mf.MANIFEST)
            if manifest_fp is None:
                continue  # not a model directory (yet)
            versions: dict[int, tuple] = {}
            for vdir in model_dir.iterdir():
                if vdir.is_dir() and vdir.name.isdigit() and int(vdir.name) > 0:
                    versions[int(vdir.name)] = _dir_fp(vdir)
            out[model_dir.name] = (model_dir, manifest_fp, versions)
        return out

    async def reconcile(self, initial: bool = False) -> None:
        """Bring what is loaded in line with what is on disk (one pass)."""
        async with self._reconcile_lock:
            scan = self._scan()
            for name in [n for n in self._models if n not in scan]:
                rec = self._models.pop(name)
                log.info("model removed from repository", extra={"model": name})
                for r in rec.versions.values():
                    self._retire(rec, r)
            for name, (model_dir, manifest_fp, versions) in scan.items():
                rec = self._models.setdefault(name, ModelRecord(name))
                if manifest_fp != rec.manifest_fp:
                    rec.manifest_fp = manifest_fp
                    self._read_manifest(rec, model_dir)
                rec.present = set(versions)
                self._reconcile_model(rec, model_dir, versions, initial)
        await self._publish()

    def _read_manifest(self, rec: ModelRecord, model_dir: Path) -> None:
        try:
            rec.manifest = mf.load(model_dir)
            rec.manifest_error = ""
        except ConfigError as exc:
            rec.manifest_error = str(exc)
            self.stats.model_loads.labels(self.stats.model(rec.name), "failed").inc()
            log.error(
                "model manifest rejected; loaded versions keep serving",
                extra={"model": rec.name, "error": rec.manifest_error},
            )

    def _reconcile_model(self, rec: ModelRecord, model_dir: Path, versions: dict[int, tuple], initial: bool) -> None:
        man = rec.manifest
        for v in [v for v in rec.versions if v not in versions]:  # version directory removed
            self._retire(rec, rec.versions[v])
            del rec.versions[v]
        if isinstance(man, mf.CascadeManifest):
            return
        if man is None or rec.manifest_error:
            for v in versions:
                r = rec.versions.setdefault(v, VersionRecord(v))
                if not r.loading:
                    r.state, r.error = FAILED, rec.manifest_error or "no manifest"
            return
        desired = set(man.version_policy.select(versions))
        for v in versions:
            r = rec.versions.setdefault(v, VersionRecord(v))
            if v not in desired:
                if r.loaded is None and not r.loading:
                    r.state, r.error = UNLOADED, ""
                continue
            fp = (rec.manifest_fp, versions[v])
            if r.loading or r.fingerprint == fp:
                continue
            if not initial and self._seen.get((rec.name, v)) != fp:
                self._seen[(rec.name, v)] = fp  # wait one more scan for the files to settle
                continue
            self._seen.pop((rec.name, v), None)
            r.loading, r.fingerprint = True, fp
            if r.loaded is None:
                r.state, r.error = LOADING, ""
            self._spawn(self._load(rec, r, man, model_dir / str(v)), f"load:{rec.name}:{v}")
        self._retire_undesired(rec)

    def _retire_undesired(self, rec: ModelRecord) -> None:
        """Unload versions the policy no longer selects, once a selected one serves."""
        man = rec.manifest
        if not isinstance(man, mf.ModelManifest):
            return
        desired = set(man.version_policy.select(rec.present))
        if not any(rec.versions[v].loaded is not None for v in desired if v in rec.versions):
            return  # keep the old version serving until its successor is ready
        for v, r in rec.versions.items():
            if v not in desired and r.loaded is not None:
                self._retire(rec, r)

    def _retire(self, rec: ModelRecord, r: VersionRecord) -> None:
        if r.loaded is None:
            return
        old, r.loaded = r.loaded, None
        r.state, r.provider = UNLOADED, ""
        self._spawn(self._unload(old), f"retire:{rec.name}:{r.version}")

    async def _unload(self, old: LoadedVersion) -> None:
        started = time.monotonic()
        await old.retire()
        log.info(
            "model version unloaded",
            extra={"model": old.name, "version": old.version, "drain_s": round(time.monotonic() - started, 3)},
        )

    async def _load(self, rec: ModelRecord, r: VersionRecord, man: mf.ModelManifest, vdir: Path) -> None:
        started = time.monotonic()
        label = self.stats.model(rec.name)
        try:
            model = await asyncio.to_thread(self._load_blocking, man, vdir, self._runtime_for(rec.name))
        except Exception as exc:
            r.loading = False
            r.state, r.error = FAILED, str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            self.stats.model_loads.labels(label, "failed").inc()
            keeps = rec.serving.version if rec.serving else None
            log.error(
                "model version failed to load",
                extra={"model": rec.name, "version": r.version, "error": r.error, "still_serving_version": keeps},
            )
            await self._publish()
            return
        batcher = Batcher(
            rec.name,
            model.infer,
            model.featurizer.pad_values,
            BatchPolicy(
                max_batch_size=man.batching.max_batch_size,
                max_queue_delay_s=man.batching.max_queue_delay_ms / 1000.0 if self.wait_for_batch else 0.0,
                capacity=man.batching.max_queue_rows or self.queue_capacity,
                max_batch_s=self.max_batch_s,
            ),
            self.stats,
            seed=model.warmup_timings,
            background_infer=model.infer_background if model.background_session is not None else None,
        )
        batcher.start()
        new = LoadedVersion(man, r.version, model, batcher)
        r.loading = False
        if self._models.get(rec.name) is not rec or r.version not in rec.versions:
            await batcher.close()  # the model or version vanished while loading
            return
        old, r.loaded = r.loaded, new  # the swap: one assignment on the event loop
        r.state, r.error, r.provider = READY, "", new.provider
        if old is not None:
            self._spawn(self._unload(old), f"retire:{rec.name}:{r.version}")
        self._retire_undesired(rec)
        elapsed = time.monotonic() - started
        self.stats.model_loads.labels(label, "ok").inc()
        self.stats.load_duration.labels(label).observe(elapsed)
        log.info(
            "model version ready",
            extra={
                "model": rec.name,
                "version": r.version,
                "execution_provider": new.provider,
                "labels": list(man.labels),
                "max_batch_size": man.batching.max_batch_size,
                "load_s": round(elapsed, 3),
            },
        )
        await self._publish()

    def _runtime_for(self, name: str) -> RuntimeOptions:
        """A cascade's first stage (the cheap tier) runs with ``first_stage_intra_op_threads``.

        Its graph is tiny: splitting an operator over two threads buys nothing, and on a
        small CPU each split waits for a thread that may sit behind the encoder's batch.
        Measured on 2 cores with MiniLM batches running back to back on another thread
        (README, "cheap tier"): one thread kept the n-gram model's worst single-row
        latency under 50 ms where two threads saw 100-300 ms stalls.
        """
        threads = self.first_stage_intra_op_threads
        if threads and any(
            isinstance(rec.manifest, mf.CascadeManifest) and rec.manifest.stages[0] == name
            for rec in self._models.values()
        ):
            return replace(self.runtime, intra_op_threads=threads)
        return self.runtime

    def _load_blocking(self, man: mf.ModelManifest, vdir: Path, runtime: RuntimeOptions) -> OnnxModel:
        model = OnnxModel(man, vdir, runtime)
        model.warm_up()
        return model

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self) -> None:
        """Push per-model health and gauges when they change."""
        for name, rec in list(self._models.items()):
            label = self.stats.model(name)
            serving = self.is_serving(name)
            lv = rec.serving
            self.stats.model_ready.labels(label).set(1 if serving else 0)
            self.stats.serving_version.labels(label).set(lv.version if lv else 0)
            failed = sum(1 for r in rec.versions.values() if r.state == FAILED) or (1 if rec.manifest_error else 0)
            self.stats.model_failed.labels(label).set(failed)
            await self._set_health(name, serving)
        for name in [n for n in self._published if n not in self._models]:
            self.stats.model_ready.labels(self.stats.model(name)).set(0)
            await self._set_health(name, False)

    async def _set_health(self, name: str, serving: bool) -> None:
        if self._published.get(name) == serving:
            return
        self._published[name] = serving
        if self._health is not None:
            await self._health(name, serving)


def _stat_fp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _dir_fp(vdir: Path) -> tuple:
    out = []
    try:
        for f in sorted(vdir.iterdir()):
            fp = _stat_fp(f)
            if fp is not None:
                out.append((f.name, *fp))
    except OSError:
        pass
    return tuple(out)
