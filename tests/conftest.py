"""Shared fixtures for the model tests: every test runs on CPU, in PyNative mode.

The device is chosen once per process (MindSpore cannot switch), here, before any
test builds a model. tests/test_device.py resets `mindtrans.device._chosen` with
monkeypatch, which puts it back afterwards.
"""
import pytest


@pytest.fixture(scope="session", autouse=True)
def cpu_device():
    """Select CPU once for the whole session, whatever $MINDTRANS_DEVICE says."""
    from mindtrans.device import select_device

    assert select_device("CPU", verbose=False) == "CPU"
    return "CPU"


@pytest.fixture
def tiny_config():
    """The `tiny` preset (d_model 32, 4 heads, 2+2 layers, dropout 0) with small vocabularies."""
    from mindtrans.config import TransformerConfig

    return TransformerConfig.preset("tiny", src_vocab_size=40, tgt_vocab_size=50, max_len=32)


@pytest.fixture(autouse=True)
def no_mirror_from_the_environment(monkeypatch):
    """`make test` exports MINDTRANS_MIRROR for the lessons; unit tests choose their own mirrors."""
    monkeypatch.delenv("MINDTRANS_MIRROR", raising=False)
