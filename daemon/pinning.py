"""Pin, unpin, rollback: one model's action on the store, and the document that answers it.

The same code runs in the service (``POST /v1/models/<name>/pin|unpin|rollback``, in a
worker thread) and in the CLI when no service answers on the socket, so both answer
with the same document: ``{"name", "version" (the current one), "pinned": null |
{"version", "since", "since_at", "waiting"}}``. ``waiting`` is the version the origin
offered at the last check that the pin holds back (downloaded and recorded, so an
unpin publishes it without the network), or null.

Errors: a version that is not kept, or a model with nothing to pin or roll back to,
is the store's NotFoundError (the CLI's exit 2, the socket's 404).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .times import with_rfc3339

if TYPE_CHECKING:
    from shardsync.store import Pin, Store

__all__ = ["ACTIONS", "apply", "pin_json", "request_version"]

#: The actions, as the CLI's subcommands and the socket's routes name them.
ACTIONS = ("pin", "unpin", "rollback")


def pin_json(pin: Pin | None) -> dict[str, Any] | None:
    """A pin as status and the answers show it (None: not pinned)."""
    if pin is None:
        return None
    return with_rfc3339(pin.to_json(), "since")


def apply(store: Store, name: str, action: str, version: str | None = None) -> dict[str, Any]:
    """Do ``action`` on model ``name`` (a configured one: the caller checks), durably;
    return the answer document. ``version`` is pin's and rollback's VERSION (unpin
    takes none)."""
    if action == "pin":
        store.pin(name, version)
    elif action == "rollback":
        store.rollback(name, version)
    elif action == "unpin":
        store.unpin(name)  # publishes what the pin held back
    else:
        raise ValueError(f"not an action: {action!r}")
    return {"name": name, "version": store.current_id(name),
            "pinned": pin_json(store.pinned(name))}


def request_version(body: Any) -> str | None:
    """The ``version`` of a request body (``{"version": "..."}``, or no body: None);
    ValueError saying what is wrong with any other."""
    if body is None:
        return None
    if not isinstance(body, Mapping) or set(body) - {"version"}:
        raise ValueError('the body must be a JSON object {"version": "<id>"} '
                         "(or no body)")
    version = body.get("version")
    if version is not None and not isinstance(version, str):
        raise ValueError(f"version must be a string, not {version!r}")
    return version
