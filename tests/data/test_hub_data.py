"""A hub dataset id that cannot be read fails at once with one line: the id, what went wrong, what to do."""

import time

import datasets
import huggingface_hub
import pytest

from diffalign.data.pairs import PreferencePairs, load_pair_table
from diffalign.data.streaming import StreamingPairs

from ..hub_stub import hub_endpoint


def test_an_unreachable_hub_fails_at_once_and_says_how_to_use_the_cache_or_local_data(monkeypatch):
    with hub_endpoint("unreachable") as endpoint:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
        start = time.monotonic()
        for read in (load_pair_table, lambda path: StreamingPairs(path)):
            with pytest.raises(FileNotFoundError, match=r"^data.path=someone/pairs: the Hugging Face hub could not be "
                                                        r"reached \(ConnectError: .*\); set HF_HUB_OFFLINE=1 to read a "
                                                        r"copy in the local cache, or give local data: data.path="):
                read("someone/pairs")
        assert time.monotonic() - start < 5  # no retries with back-off (about 30 s)


def test_a_dataset_the_hub_does_not_have_is_named(monkeypatch):
    with hub_endpoint("no-such-repo") as endpoint:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
        with pytest.raises(FileNotFoundError, match=r"^data.path=someone/pairs: no such dataset on the hub \(or it is "
                                                    r"private: log in with `hf auth login`\), and no such local file"):
            PreferencePairs("someone/pairs")


def test_offline_without_a_cached_copy_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^data.path=someone/pairs: not in the local cache, and HF_HUB_OFFLINE "
                                                r"is set; read it once with network, or give local data"):
        load_pair_table("someone/pairs")
