"""Finding and reading scorer weights: local files, hub files and URLs, safely and with clear offline errors.

Scorer checkpoints come in three shapes: a hub model folder (`from_pretrained`), a single file in a
hub repository (HPS's `HPS_v2.1_compressed.pt`, ImageReward's `ImageReward.pt`), or a file on the web
(the LAION aesthetic head). Weights are read from safetensors where the publisher offers them; the
published `.pt`/`.pth` files are torch pickles, read with `torch.load(weights_only=True)` only, which
refuses anything but tensors and plain containers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..paths import looks_local


class WeightsNotFound(FileNotFoundError):
    """A scorer's weights are neither on disk nor reachable; the message says what to download."""


def hub_file(source: str, filename: str, what: str) -> Path:
    """Path of `filename`: `source` itself if it is that file, inside `source` if it is a folder, else from the hub repo `source`.

    `what` names the scorer for the error message.
    """
    local = Path(source).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        candidate = local / filename
        if candidate.is_file():
            return candidate
        raise WeightsNotFound(f"{what}: {candidate} not found; the folder {local} must hold {filename}")
    if looks_local(source):
        raise WeightsNotFound(f"{what}: {source} does not exist")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=source, filename=filename))
    except Exception as error:  # offline, unknown repo, gated: one actionable message
        raise WeightsNotFound(
            f"{what}: could not get {filename} from the hub repo {source!r} ({type(error).__name__}). "
            f"Offline, download it elsewhere (hf download {source} {filename}) and pass the "
            f"local file or folder instead of {source!r}"
        ) from error


def url_file(url: str, cache_dir: str | Path | None, what: str) -> Path:
    """A local copy of `url` in `cache_dir` (default ~/.cache/diffalign/weights), downloaded atomically once."""
    folder = Path(cache_dir or Path.home() / ".cache" / "diffalign" / "weights").expanduser()
    target = folder / url.rsplit("/", 1)[-1].replace("%2B", "+")
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as error:
        raise WeightsNotFound(
            f"{what}: could not download {url} ({type(error).__name__}). Offline, fetch it elsewhere and "
            f"pass the local file (or put it at {target})"
        ) from error
    return target


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, or of a torch checkpoint read with `weights_only=True`.

    `key` picks a nested dict (HPS keeps its weights under "state_dict"); a "module." prefix left by
    DataParallel is removed.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"{path} is not a tensors-only torch checkpoint ({error}); diffalign never unpickles "
                f"arbitrary objects: convert it to safetensors"
            ) from error
        if key is not None and isinstance(state, dict) and key in state:
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat dict of tensors{f' under {key!r}' if key else ''}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
