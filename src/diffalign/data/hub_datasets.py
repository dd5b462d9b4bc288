"""One quick look at the Hugging Face hub before a dataset is read from it.

`datasets.load_dataset` of a hub id with no network retries with back-off for about 30 s, then fails
with a long traceback. One request without retries tells a missing dataset and an unreachable hub
apart first, and each gets a one-line error saying what to do. With HF_HUB_OFFLINE set, `datasets`
reads its cache at once, and a dataset missing from it is the same kind of error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import huggingface_hub
from huggingface_hub.errors import GatedRepoError, HTTPError, RepositoryNotFoundError, RevisionNotFoundError

PROBE_TIMEOUT_S = 10.0
T = TypeVar("T")


LOCAL_DATA = "data.path=/path/to/pairs.parquet (a file, a folder of shards or a pairs.jsonl)"


def check_hub_dataset(path: str) -> None:
    """Raise a FileNotFoundError naming data.path when the hub has no dataset `path` or cannot be reached
    (one request, no retries); nothing when HF_HUB_OFFLINE is set (`read_hub_dataset` handles that)."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return
    try:
        huggingface_hub.HfApi().dataset_info(path, timeout=PROBE_TIMEOUT_S)  # HF_ENDPOINT as set now
    except GatedRepoError as error:
        raise FileNotFoundError(f"data.path={path}: a gated dataset; accept its terms on the hub and log in "
                                "(`hf auth login`)") from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise FileNotFoundError(f"data.path={path}: no such dataset on the hub (or it is private: log in with "
                                "`hf auth login`), and no such local file or folder") from error
    except (HTTPError, OSError) as error:  # no network, a proxy, a timeout, the hub down (5xx)
        raise FileNotFoundError(f"data.path={path}: the Hugging Face hub could not be reached "
                                f"({type(error).__name__}: {error}); set HF_HUB_OFFLINE=1 to read a copy in the "
                                f"local cache, or give local data: {LOCAL_DATA}") from error


def read_hub_dataset(path: str, read: Callable[[], T]) -> T:
    """`read()` (a `datasets.load_dataset` of hub id `path`) after `check_hub_dataset`; with HF_HUB_OFFLINE set,
    a dataset missing from the local cache is a FileNotFoundError naming data.path."""
    check_hub_dataset(path)
    try:
        return read()
    except ConnectionError as error:  # datasets: "Couldn't reach ... on the Hub (OfflineModeIsEnabled)"
        if not huggingface_hub.constants.HF_HUB_OFFLINE:
            raise
        raise FileNotFoundError(f"data.path={path}: not in the local cache, and HF_HUB_OFFLINE is set; read it once "
                                f"with network, or give local data: {LOCAL_DATA}") from error
