"""Can a model be loaded? Decided before any library tries, the same way for every model the project loads.

Loading a Hub id with no network through diffusers, transformers or timm goes through huggingface_hub's downloads,
which retry a refused connection five times with back-off (about 25 s; longer where packets are dropped) and then
blame a missing file ("does not appear to have a file named model_index.json"); torch-fidelity's weights wait on
``torch.hub`` the same way. So every loader (the diffusers pipelines, CLIP and the NSFW detector through
transformers, timm classifiers, torch-fidelity's InceptionV3 weights) asks here first:

1. **the local cache, without network**: a Hub model whose files are in the Hugging Face cache
   (``huggingface_hub.try_to_load_from_cache``) is loaded from its cached snapshot folder, so the library never
   looks at the network; torch-fidelity's weights from the ``torch.hub`` checkpoint they are saved to;
2. **else the network, once**: one request with a short timeout (:func:`probe_timeout`, 5 s unless
   ``IMAGENET_PLUS_HUB_TIMEOUT`` says otherwise) and no retries: ``HfApi.repo_info`` on the Hub of
   ``HF_ENDPOINT``, or a ``HEAD`` of the weights' URL. An answer lets the library download as usual (its progress
   bars, its retries on a flaky line); a repo the Hub does not have is named as such;
3. **no answer** (or ``HF_HUB_OFFLINE=1``): :class:`~imagenet_plus.errors.ModelUnavailable`, one line, within
   seconds: "cannot reach the Hugging Face Hub at … (offline?) and model 'X' is not in the local cache; download it
   first with 'hf download X' (or 'huggingface-cli download X'), then set HF_HUB_OFFLINE=1, or pass a local folder".

Written here rather than left to the libraries because none of them distinguishes "offline and not cached" from a
wrong name quickly; the decisions themselves are huggingface_hub's (its cache layout, its endpoint, its offline
switch), the probe is one plain request. ``publish`` asks :func:`probe_repo` the same question about the dataset
repo before it lists or sends anything.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from imagenet_plus.errors import ModelUnavailable
from imagenet_plus.pipeline.config import env_seconds

#: Environment variable: seconds the one network probe may take (default :data:`DEFAULT_PROBE_TIMEOUT`).
PROBE_TIMEOUT_ENV = "IMAGENET_PLUS_HUB_TIMEOUT"
DEFAULT_PROBE_TIMEOUT = 5.0
DEFAULT_ENDPOINT = "https://huggingface.co"


def probe_timeout() -> float:
    """Seconds the network probe may take: ``IMAGENET_PLUS_HUB_TIMEOUT`` or :data:`DEFAULT_PROBE_TIMEOUT`.

    Raises:
        UserError: the variable is not a positive number.
    """
    seconds = env_seconds(PROBE_TIMEOUT_ENV)
    return DEFAULT_PROBE_TIMEOUT if seconds is None else seconds


def hub_endpoint() -> str:
    """The Hub the libraries talk to: ``HF_ENDPOINT`` or https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def download_hint(repo_id: str) -> str:
    """How to put a Hub model into the cache, and the other ways out (the end of every offline message)."""
    return (f"download it first with 'hf download {repo_id}' (or 'huggingface-cli download {repo_id}') where there "
            "is network, into this machine's Hugging Face cache (HF_HOME), then set HF_HUB_OFFLINE=1; or pass a "
            "local folder")


def offline_message(what: str, repo_id: str) -> str:
    """The one line for a Hub model that is neither in the cache nor reachable."""
    from huggingface_hub import constants

    where = ("HF_HUB_OFFLINE is set" if _offline()
             else f"cannot reach the Hugging Face Hub at {hub_endpoint()} (offline?)")
    return f"{where} and {what} is not in the local cache ({constants.HF_HUB_CACHE}); {download_hint(repo_id)}"


def cached_snapshot(repo_id: str, markers: str | tuple[str, ...]) -> Path | None:
    """The snapshot folder of ``repo_id`` (main) in the Hugging Face cache when one of its files ``markers`` is there.

    No network. A marker is a file every copy of such a model has (``model_index.json`` for a diffusers pipeline,
    ``config.json`` for transformers models, the weights file for a timm model).
    """
    from huggingface_hub import try_to_load_from_cache

    for marker in (markers,) if isinstance(markers, str) else markers:
        try:
            found = try_to_load_from_cache(repo_id, marker)
        except ValueError:  # not a valid repo id (huggingface_hub's validation)
            return None
        if isinstance(found, str):  # else None (not cached) or _CACHED_NO_EXIST (the Hub said it does not exist)
            return Path(found).parent
    return None


#: What :func:`probe_repo` found.
FOUND, MISSING, GATED, UNREACHABLE = "found", "missing", "gated", "unreachable"


def probe_repo(repo_id: str, repo_type: str = "model", token: str | bool | None = None) -> str:
    """Ask the Hub about ``repo_id`` once: ``HfApi.repo_info`` with :func:`probe_timeout` and no retries.

    Returns:
        :data:`FOUND` (the Hub answered; an HTTP error other than "not found" counts: the caller's own request will
        report it), :data:`MISSING` (no such repo, or private without access), :data:`GATED`, or :data:`UNREACHABLE`
        (``HF_HUB_OFFLINE`` is set, or no answer: connection refused, no route, DNS, timeout).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if _offline():
        return UNREACHABLE
    try:
        HfApi(endpoint=hub_endpoint(), token=token).repo_info(repo_id, repo_type=repo_type, timeout=probe_timeout())
    except GatedRepoError:
        return GATED
    except RepositoryNotFoundError:
        return MISSING
    except HfHubHTTPError:
        return FOUND
    except (_transport_error(), OSError):  # no connection, a timeout; OfflineModeIsEnabled
        return UNREACHABLE
    return FOUND


def check_hub_reachable(what: str, repo_id: str) -> None:
    """Whether a model that is not cached can be downloaded: the Hub answers and has it (:func:`probe_repo`).

    Raises:
        ModelUnavailable: offline (``HF_HUB_OFFLINE``) or no answer (the offline message); the Hub does not
            have the repo, or it is gated.
    """
    found = probe_repo(repo_id)
    if found == UNREACHABLE:
        raise ModelUnavailable(offline_message(what, repo_id))
    if found == GATED:
        raise ModelUnavailable(f"{what} is gated on the Hugging Face Hub: accept its conditions on its page, log in "
                               "('hf auth login' or HF_TOKEN) and try again")
    if found == MISSING:
        raise ModelUnavailable(f"{what} is not on the Hugging Face Hub at {hub_endpoint()} (a typo? a private repo "
                               "needs 'hf auth login' or HF_TOKEN), and not a local folder")


def _transport_error() -> type[Exception]:
    """The HTTP client's "no answer" error (connection refused, DNS, timeout): huggingface_hub 2.x talks through
    httpx2, 1.x through httpx."""
    try:
        import httpx2 as httpx_module
    except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
        import httpx as httpx_module
    return httpx_module.TransportError


def hub_model(repo_id: str, what: str, marker: str | tuple[str, ...]) -> str:
    """Where a library should load the Hub model ``repo_id`` from: its cached snapshot folder, or ``repo_id``.

    Args:
        repo_id: the Hub id (``org/name`` or ``name``).
        what: how messages name the model (``model 'stabilityai/sd-turbo'``).
        marker: a file every copy of the model has, or several (:func:`cached_snapshot`).

    Returns:
        The cached snapshot folder (the library then reads the cache only), or ``repo_id`` when the model is not
        cached and the Hub answered (the library downloads it).

    Raises:
        ModelUnavailable: not cached and the Hub cannot be reached (or is switched off), or has no such repo.
    """
    cached = cached_snapshot(repo_id, marker)
    if cached is not None:
        return str(cached)
    check_hub_reachable(what, repo_id)
    return repo_id


def url_file(url: str, path: Path, what: str, hint: str) -> None:
    """Check that a file a library downloads from ``url`` into ``path`` (torch-fidelity's weights) can be had.

    Cached (``path`` exists): nothing to do. Otherwise one ``HEAD`` request of ``url`` (urllib; short timeout, no
    retries): any HTTP answer means the library can download it.

    Raises:
        ModelUnavailable: not cached, and ``HF_HUB_OFFLINE`` is set (the user said there is no network) or the
            request got no answer; ``hint`` says what to do instead.
    """
    if path.is_file():
        return
    host = urllib.parse.urlparse(url).netloc
    if _offline():
        raise ModelUnavailable(f"HF_HUB_OFFLINE is set and {what} is not in the local cache ({path}); "
                               f"download {url} to that file first, or {hint}")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=probe_timeout()):
            return
    except urllib.error.HTTPError:
        return  # the server answered
    except (urllib.error.URLError, OSError) as exc:
        raise ModelUnavailable(f"cannot reach {host} (offline?) and {what} is not in the local cache ({path}); "
                               f"download {url} to that file first, or {hint}") from exc
