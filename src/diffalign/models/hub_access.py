"""One quick look at the Hugging Face hub before a model is loaded from it.

Loading a hub id with no network retries every file with back-off (about 30 s) and then fails with a
long chained traceback. Instead, one request without retries asks for the model's file list: if it
answers (and lists the file the loader reads first), the model loads as usual; if the hub cannot be reached (or HF_HUB_OFFLINE is set) but the
local cache holds the model, it loads from the cache alone; otherwise a one-line error names the id,
what went wrong, and how to use a local folder instead.
"""

from __future__ import annotations

import huggingface_hub
from huggingface_hub.errors import GatedRepoError, HTTPError, RepositoryNotFoundError, RevisionNotFoundError

PROBE_TIMEOUT_S = 10.0


def cached_file(repo_id: str, filename: str, revision: str | None = None) -> bool:
    """Whether the local hub cache holds `filename` of `repo_id` at `revision`."""
    return isinstance(huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision), str)


def local_files_only(repo_id: str, revision: str | None, key: str, probe: str) -> bool:
    """Whether hub model `repo_id` must be loaded from the local cache alone (the hub cannot be reached, the
    cache holds `probe`), after one request without retries for its file list, which must hold `probe` (e.g.
    'unet/config.json').

    Raises a FileNotFoundError naming the config `key` (e.g. model.pretrained) when the hub cannot be
    reached and the cache lacks the model, or when the hub has no such repository, revision or file."""
    local = f"or give a local folder: {key}=/path/to/folder"
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        if cached_file(repo_id, probe, revision):
            return True
        raise FileNotFoundError(f"{key}={repo_id}: not in the local hub cache, and HF_HUB_OFFLINE is set; download it "
                                f"with network (`hf download {repo_id}`) {local}")
    try:
        info = huggingface_hub.HfApi().model_info(repo_id, revision=revision, timeout=PROBE_TIMEOUT_S)
    except GatedRepoError as error:
        raise FileNotFoundError(f"{key}={repo_id}: a gated model; accept its terms on the hub and log in "
                                f"(`hf auth login`), {local}") from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(f"{key}={repo_id}: no such model on the hub (or it is private: log in with "
                                f"`hf auth login`); check the id, {local}") from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"{key}={repo_id}: the hub has no revision {revision!r} of it "
                                "(model.revision)") from error
    except (HTTPError, OSError) as error:  # no network, a proxy, a timeout, the hub down (5xx)
        if cached_file(repo_id, probe, revision):
            print(f"{key}={repo_id}: the hub could not be reached ({type(error).__name__}: {error}); loading the "
                  "copy in the local hub cache", flush=True)
            return True
        raise FileNotFoundError(f"{key}={repo_id}: the Hugging Face hub could not be reached ({type(error).__name__}: "
                                f"{error}) and the model is not in the local hub cache; connect to the network, "
                                f"{local}") from error
    if info.siblings is not None and probe not in {file.rfilename for file in info.siblings}:
        raise FileNotFoundError(f"{key}={repo_id}: the hub repository has no {probe}, so it is not a diffusers "
                                f"model; {local}")
    return False
