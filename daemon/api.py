"""The control socket's API: the routes the service serves, their JSON, ``/metrics``.

:class:`ControlApi` reads the running :class:`~shardsync.daemon.service.Service` it is
given (its scheduler, store, event log, config) and changes nothing but through it
(a wake-up, a reload). The routes and the status document's shape are listed in
:mod:`shardsync.daemon.control`. :meth:`ControlApi.metrics_router` is the read-only
subset (``GET /metrics`` alone) that ``metrics_listen`` serves over TCP.

The metric names say what is known, not what one would like to know:
``shardsync_model_last_check_ok`` is 1 when the last check succeeded. It replaced
``shardsync_model_up_to_date`` (same value), whose name promised more than the
service can know: whether the origin has changed since the last check is only
learnt by the next check. "Up to date" is a rule over what is exported, e.g.
``shardsync_model_last_check_ok == 1 and time() -
shardsync_model_last_success_timestamp_seconds < 2 * interval``. The old name is not
kept as an alias: a dashboard that reads it would keep its wrong meaning.

Times: every key holding Unix seconds (``last_check``, ``since``, an event's ``time``)
has a twin ``<key>_at`` holding the same moment in RFC 3339, UTC, to the second
(``"2026-12-02T01:02:03Z"``), as Syncthing's API, which operators know, writes
times: readable in ``curl`` output and by ``jq``'s ``fromdate``. The epoch keys stay
under their old names, for scripts that do arithmetic on them.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import trio

from shardsync.store import NotFoundError, ShardsyncError

from . import __version__
from .httpserver import Handler, HTTPError, Request, Response, Router
from .metrics import CONTENT_TYPE, Exposition, Kind
from .pinning import ACTIONS, apply, pin_json, request_version
from .processmetrics import add_process_metrics, read_process
from .scheduler import ModelState
from .signing import signature_status
from .sync import source_of
from .times import rfc3339, with_rfc3339

if TYPE_CHECKING:
    from shardsync.store import Store, StoreStats

    from .service import Service

__all__ = ["MAX_POLL", "METRICS", "ControlApi", "rfc3339", "with_rfc3339"]

#: Longest long-poll a client may ask of /v1/events.
MAX_POLL = 300.0

#: The families ``GET /metrics`` serves, in order: name -> (kind, help text).
METRICS: dict[str, tuple[Kind, str]] = {
    "shardsync_build_info":
        ("gauge", "Always 1; the running shardsync's version is in the label"),
    "shardsync_model_last_check_timestamp_seconds":
        ("gauge", "Unix time the model's last check began (it may still be running)"),
    "shardsync_model_last_success_timestamp_seconds":
        ("gauge", "Unix time of the model's last successful check"),
    "shardsync_model_downloaded_bytes_total":
        ("counter", "Body bytes downloaded for the model since the service started"),
    "shardsync_model_errors_total":
        ("counter", "Failed checks of the model since the service started"),
    "shardsync_model_last_check_ok":
        ("gauge", "1 if the model's last finished check succeeded; 0 if it failed or none "
                  "has finished since the service started"),
    "shardsync_store_objects": ("gauge", "Objects in the content-addressed store"),
    "shardsync_store_bytes": ("gauge", "Bytes of all objects in the store"),
    "shardsync_dedupe_saved_bytes":
        ("gauge", "Bytes that kept versions reference beyond the objects stored "
                  "(saved by dedupe)"),
    "shardsync_config_error": ("gauge", "1 if the last reload failed (old config running)"),
}


class ControlApi:
    """The handlers behind the control socket, for one running ``service``."""

    def __init__(self, service: Service) -> None:
        self.service = service
        # The service's dict, shared: it records each sync's version, this reads it.
        self._versions = service.current_versions
        self._sources = service.current_sources
        self._trust = service.trust_records

    @property
    def store(self) -> Store | None:
        return self.service.store

    def router(self) -> Router:
        r = Router()
        for method, pattern, handler in (
            ("GET", "/v1/health", self._h_health),
            ("GET", "/v1/status", self._h_status),
            ("GET", "/v1/models/{name}", self._h_model),
            ("POST", "/v1/sync", self._h_sync_all),
            ("POST", "/v1/models/{name}/sync", self._h_sync_one),
            ("POST", "/v1/reload", self._h_reload),
            ("GET", "/v1/events", self._h_events),
            ("GET", "/metrics", self._h_metrics),
        ):
            r.add(method, pattern, handler)
        for action in ACTIONS:
            r.add("POST", f"/v1/models/{{name}}/{action}", self._pin_handler(action), body=True)
        return r

    def metrics_router(self) -> Router:
        """``GET /metrics`` (and ``HEAD``) only, for the ``metrics_listen`` TCP port:
        nothing there may change the service or show more than the metrics."""
        r = Router()
        r.add("GET", "/metrics", self._h_metrics)
        return r

    def _model_json(self, st: ModelState) -> dict[str, Any]:
        assert self.store
        version = self._current_version(st.config.name)
        return with_rfc3339({
            "name": st.config.name,
            "url": st.config.url,
            "state": st.progress.state,
            "version": version,
            "source": self._current_source(st.config.name),
            "signature": signature_status(self._trust_record(st.config.name), version),
            "last_check": st.last_check,
            "last_success": st.last_success,
            "next_check": st.next_check if st.progress.state in ("idle", "error") else None,
            "last_error": st.last_error,
            "progress": st.progress.to_json(),
            "pinned": self._pin(st.config.name),
            # the download window a model in state "waiting" waits for (None otherwise)
            "waiting": with_rfc3339(st.progress.waiting, "next")
            if st.progress.waiting is not None and st.progress.state == "waiting" else None,
            # the last failed attempt of a request this sync will try again (None otherwise)
            "retrying": with_rfc3339(st.progress.retrying, "next_try")
            if st.progress.retrying is not None
            and st.progress.state not in ("idle", "error") else None,
        }, "last_check", "last_success", "next_check")

    def _pin(self, name: str) -> dict[str, Any] | None:
        assert self.store
        try:
            return pin_json(self.store.pinned(name))
        except ShardsyncError:
            return None  # damaged: the model's syncs fail, and last_error says why

    def _current_version(self, name: str) -> str | None:
        assert self.store
        if name not in self._versions:  # not synced yet since start: ask the store once
            self._versions[name] = self.store.current_id(name)
        return self._versions[name]

    def _current_source(self, name: str) -> str | None:
        """The source that last served the current version (:func:`.sync.source_of`)."""
        assert self.store
        if name not in self._sources:  # not synced since start, or a pin changed it
            try:
                current = self.store.current(name)
            except ShardsyncError:
                current = None  # unreadable: the model's next sync reports it
            self._sources[name] = source_of(current) if current is not None else None
        return self._sources[name]

    def _trust_record(self, name: str) -> dict[str, Any] | None:
        assert self.store
        if name not in self._trust:  # not known since the last sync: ask the store once
            try:
                self._trust[name] = self.store.trust_record(name)
            except ShardsyncError:
                self._trust[name] = None  # damaged: the model's next sync reports it
        return self._trust[name]

    def status(self) -> dict[str, Any]:
        """The status document (see :mod:`.control` for its shape)."""
        assert self.service.scheduler
        return {
            "service": {"version": __version__,
                        "uptime_s": round(time.time() - self.service.started, 3),
                        "config": str(self.service.config.path), "pid": os.getpid(),
                        "config_error": self.service.config_error},
            "models": [self._model_json(st) for st in self.service.scheduler.models.values()],
        }

    def _state(self, request: Request) -> ModelState:
        assert self.service.scheduler
        name = request.params["name"]
        st = self.service.scheduler.models.get(name)
        if st is None:
            raise HTTPError(404, f"no model {name!r} in the running config")
        return st

    async def _h_health(self, request: Request) -> Response:
        return Response.json({"ok": True, "version": __version__})

    async def _h_status(self, request: Request) -> Response:
        return Response.json(self.status())

    async def _h_model(self, request: Request) -> Response:
        assert self.store
        st = self._state(request)
        doc = self._model_json(st)
        current = doc["version"]
        versions = []
        for h in reversed(self.store.history(st.config.name)):
            try:
                v = self.store.version(st.config.name, h["version"])
            except (NotFoundError, ShardsyncError):
                continue  # pruned
            versions.append(with_rfc3339(
                {"version": v.id, "current": v.id == current, "since": h["from"],
                 "until": h["until"], "files": len(v.files) + 1, "bytes": v.size},
                "since", "until"))
        doc["versions"] = versions
        return Response.json(doc)

    async def _h_sync_all(self, request: Request) -> Response:
        assert self.service.scheduler
        return Response.json({"accepted": self.service.scheduler.wake()}, status=202)

    async def _h_sync_one(self, request: Request) -> Response:
        assert self.service.scheduler
        st = self._state(request)
        return Response.json({"accepted": self.service.scheduler.wake(st.config.name)}, status=202)

    def _pin_handler(self, action: str) -> Handler:
        """``POST /v1/models/<name>/<action>`` (:mod:`.pinning`), optional body
        ``{"version": ...}``: 404 for a model not in the running config or a version not
        kept, 400 for a bad body. The store's work runs in a thread (a rollback
        publishes); an unpin wakes the model, so what the pin held back is published now."""

        async def handle(request: Request) -> Response:
            assert self.store and self.service.scheduler
            name = self._state(request).config.name
            try:
                version = request_version(request.json())
                if action == "unpin" and version is not None:
                    raise ValueError("unpin takes no version")
            except ValueError as exc:
                raise HTTPError(400, str(exc)) from None
            try:
                doc = await trio.to_thread.run_sync(apply, self.store, name, action, version)
            except NotFoundError as exc:
                raise HTTPError(404, str(exc)) from None
            self._versions[name] = doc["version"]
            self._sources.pop(name, None)  # a rollback made another version current
            self.service.store_stats = None  # a publish or prune may have changed them
            if action == "unpin":
                self.service.scheduler.wake(name)
            return Response.json(doc)

        return handle

    async def _h_reload(self, request: Request) -> Response:
        error = await self.service.reload("a request on the control socket")
        if error:
            raise HTTPError(422, f"config not reloaded, the running one stays: {error}")
        return Response.json({"ok": True, "models": [m.name for m in self.service.config.models]})

    async def _h_events(self, request: Request) -> Response:
        assert self.service.events
        since = request.query_int("since", 0, minimum=0)
        timeout = request.query_float("timeout", 30.0, minimum=0.0, maximum=MAX_POLL)
        batch = await self.service.events.wait_since(since, timeout)
        doc = batch.to_json()
        doc["events"] = [with_rfc3339(e, "time") for e in doc["events"]]
        return Response.json(doc)

    async def _h_metrics(self, request: Request) -> Response:
        assert self.service.scheduler
        stats = await self._store_stats()
        m = Exposition()
        for name, (kind, help) in METRICS.items():  # every family, even without samples
            m.declare(name, kind, help)

        def sample(name: str, value: float, labels: dict[str, str] | None = None) -> None:
            kind, help = METRICS[name]
            (m.counter if kind == "counter" else m.gauge)(name, help, value, labels)

        sample("shardsync_build_info", 1, {"version": __version__})
        for st in self.service.scheduler.models.values():
            labels = {"model": st.config.name}
            if st.last_check is not None:
                sample("shardsync_model_last_check_timestamp_seconds", st.last_check, labels)
            if st.last_success is not None:
                sample("shardsync_model_last_success_timestamp_seconds", st.last_success, labels)
            in_flight = st.progress.received if st.progress.state not in ("idle", "error") \
                else 0  # a sync in progress: its bytes count already, not only at its end
            sample("shardsync_model_downloaded_bytes_total", st.bytes_total + in_flight, labels)
            sample("shardsync_model_errors_total", st.errors_total, labels)
            sample("shardsync_model_last_check_ok",
                   1 if st.last_success and not st.last_error else 0, labels)
        sample("shardsync_store_objects", stats.objects)
        sample("shardsync_store_bytes", stats.bytes)
        sample("shardsync_dedupe_saved_bytes", stats.saved)
        sample("shardsync_config_error", 1 if self.service.config_error else 0)
        add_process_metrics(m, read_process())
        return Response(200, m.render(), CONTENT_TYPE)

    async def _store_stats(self) -> StoreStats:
        # The service drops its cached totals (None) when a publish, gc or removal changes them.
        assert self.store
        if self.service.store_stats is None:
            self.service.store_stats = await trio.to_thread.run_sync(self.store.stats)
        return self.service.store_stats
