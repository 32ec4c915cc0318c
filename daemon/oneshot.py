"""One pass over some models, then done: what `shardsync sync`, `verify --repair` and the
demo run, outside the service.

The service (:mod:`.service`) keeps its store, client and syncer for its whole life;
a one-shot command opens them here, syncs the named models concurrently under one
download limit, and closes them again.

:func:`open_store` is all that ``verify`` and ``gc`` need, so trio, httpx and the
syncer are imported by :func:`sync_models` when it runs, not with this module
(start-up, docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from shardsync.store import Store

from .config import Config, ModelConfig
from .entrypoint import rewrite_paths
from .owner import check_owner

if TYPE_CHECKING:
    from .sync import SyncResult

__all__ = ["open_store", "sync_models"]


def open_store(config: Config) -> Store:
    """The store ``config`` names, opened (and recovered) for a one-shot command; a
    WrongUserError, writing nothing, unless this user owns state_dir (:mod:`.owner`)."""
    check_owner(config.state_dir)
    return Store(config.state_dir, config.site_dir, entry_point=rewrite_paths,
                 keep_versions=config.keep_versions)


async def sync_models(config: Config, store: Store, names: Sequence[str],
                      show_progress: bool = False, *,
                      models: Sequence[ModelConfig] | None = None) -> list[SyncResult]:
    """Sync the named models concurrently (sharing one download limit); results in order.

    ``models``, when given, are synced instead of the config's models of those names
    (``shardsync import``: the same models with ``file://`` URLs; :mod:`.exchange`).

    ``site_dir/shardsync.js`` is made the packaged page script first (see
    :mod:`.pagescript`). With ``show_progress`` stderr shows progress until every model
    is done (:class:`.progress.ProgressDisplay`: rows redrawn on a terminal, a line per
    state change otherwise). A cancel stops the downloads where they are (their
    partials are kept).
    """
    import trio

    from .fetch import Fetcher
    from .httpclient import make_client
    from .pagescript import publish as publish_page_script
    from .progress import ProgressDisplay
    from .ratelimit import RateLimits
    from .sync import Progress, Syncer
    from .tuning import tune_for_downloads

    tune_for_downloads()
    # The pages' script goes with the models it loads: current whenever we publish.
    await trio.to_thread.run_sync(publish_page_script, store)
    # Records of models no longer configured would keep their objects from gc forever.
    await trio.to_thread.run_sync(store.prune_downloads, config.manifest_urls)
    chosen = {m.name: m for m in models} if models is not None else {
        n: config.model(n) for n in names}
    progress = {n: Progress() for n in names}
    results: dict[str, SyncResult] = {}
    async with make_client(max_connections=config.concurrency * 2, origins=config.origins,
                           models=config.models) as client:
        # max_rate holds here too; download_windows are the service's schedule: a sync
        # run by hand is the operator asking for the bytes now.
        rates = RateLimits()
        rates.apply(config)
        syncer = Syncer(store, Fetcher(client, rates=rates), concurrency=config.concurrency,
                        max_model_bytes=config.max_model_bytes)

        async def one(name: str) -> None:
            results[name] = await syncer.sync(chosen[name], progress[name])

        async with trio.open_nursery() as outer:
            if show_progress:
                outer.start_soon(ProgressDisplay(progress).run)
            async with trio.open_nursery() as nursery:
                for n in names:
                    nursery.start_soon(one, n)
            outer.cancel_scope.cancel()
    return [results[n] for n in names]
