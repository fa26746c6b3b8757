"""`facecast demo` offers FULL mode when a language model is configured, and says how to configure one when
not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from facecast.cli.serve import full_mode_offer
from facecast.server.store import LlmConfigRecord, ensure_dev_key, open_store


@pytest.fixture(autouse=True)
def _no_server_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FACECAST_LLM_BASE_URL", "FACECAST_LLM_MODEL", "FACECAST_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_without_an_llm_the_demo_says_how_to_configure_one(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    try:
        offer = full_mode_offer(store, ensure_dev_key(store, tmp_path))
    finally:
        store.close()
    assert offer.page_fragment is None
    assert "FACECAST_LLM_BASE_URL" in offer.text and "FACECAST_LLM_MODEL" in offer.text
    assert "/v1/llm_configurations" in offer.text


def test_the_servers_default_llm_is_offered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACECAST_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("FACECAST_LLM_MODEL", "llama3.2")
    store = open_store(None, tmp_path)
    try:
        offer = full_mode_offer(store, ensure_dev_key(store, tmp_path))
    finally:
        store.close()
    assert offer.page_fragment == "&mode=FULL"
    assert "llama3.2" in offer.text


def test_the_dev_keys_llm_configuration_is_offered_and_not_another_keys(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    try:
        dev_key = ensure_dev_key(store, tmp_path)
        other, _ = store.create_key("someone else")
        now = time.time()

        def config(owner: str, name: str) -> LlmConfigRecord:
            return LlmConfigRecord(
                id=f"llm_{name}",
                owner=owner,
                display_name=name,
                model_name="m",
                secret_id=None,
                base_url="http://127.0.0.1:9/v1",
                created_at=now,
                updated_at=now,
            )

        store.insert_owned(config(other.id, "theirs"))
        assert full_mode_offer(store, dev_key).page_fragment is None
        dev = store.authenticate_key(dev_key)
        assert dev is not None
        store.insert_owned(config(dev.id, "mine"))
        offer = full_mode_offer(store, dev_key)
    finally:
        store.close()
    assert offer.page_fragment == "&mode=FULL&llm=llm_mine"
    assert "'mine'" in offer.text
