"""select_device: forcing, refusing, caching. conftest.py has already chosen CPU for the session.

MindSpore cannot switch devices inside a process, so these tests never select anything
but CPU: they reset the cached choice (`mindtrans.device._chosen`) with monkeypatch,
which restores it after each test.
"""
import os

import mindspore as ms
import mindspore.device_context as dc
import pytest

from mindtrans import device


@pytest.fixture
def fresh(monkeypatch):
    """select_device as in a new process: no cached choice, no $MINDTRANS_DEVICE.

    CPU's thread count can be set only once per process (conftest did it), so the
    call is recorded instead.
    """
    monkeypatch.setattr(device, "_chosen", None)
    monkeypatch.delenv("MINDTRANS_DEVICE", raising=False)
    threads = []
    monkeypatch.setattr(dc.cpu.op_tuning, "threads_num", threads.append)
    return threads


def unavailable_devices():
    return [name for name in device.DEVICES if name not in device.available_devices()]


def test_session_runs_on_cpu():
    assert device._chosen == "CPU"
    assert ms.get_context("device_target") == "CPU"


def test_available_devices_end_with_cpu():
    found = device.available_devices()
    assert found[-1] == "CPU"
    assert set(found) <= set(device.DEVICES)
    assert found == [d for d in device.DEVICES if d in found]  # best first


def test_cpu_threads_counts_usable_cores():
    assert 1 <= device.cpu_threads() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("value", ["CPU", "cpu"])
def test_environment_variable_forces_cpu(fresh, monkeypatch, capsys, value):
    monkeypatch.setenv("MINDTRANS_DEVICE", value)
    assert device.select_device() == "CPU"
    assert device._chosen == "CPU"
    assert ms.get_context("device_target") == "CPU"
    assert fresh == [device.cpu_threads()]  # every core put to work
    assert "mindtrans: using CPU" in capsys.readouterr().out


def test_verbose_false_prints_nothing(fresh, capsys):
    assert device.select_device("CPU", verbose=False) == "CPU"
    assert capsys.readouterr().out == ""


def test_forcing_an_unavailable_device_names_the_available_ones(fresh, monkeypatch):
    missing = unavailable_devices()
    if not missing:
        pytest.skip("every device is available here")
    with pytest.raises(RuntimeError) as info:
        device.select_device(missing[0].lower())
    message = str(info.value)
    assert f"device {missing[0]} (from --device) is not available here" in message
    assert f"available: {', '.join(device.available_devices())}: pass one of those" in message
    assert device._chosen is None  # nothing was chosen
    monkeypatch.setenv("MINDTRANS_DEVICE", missing[0])  # the same through the environment, which it names
    with pytest.raises(RuntimeError, match=f"device {missing[0]} \\(from MINDTRANS_DEVICE\\) is not available "
                                           "here.*unset MINDTRANS_DEVICE"):
        device.select_device()
    assert ms.get_context("device_target") == "CPU"


@pytest.mark.parametrize("name", ["TPU", "cuda"])
def test_unknown_device_name_raises_value_error(fresh, name):
    with pytest.raises(ValueError, match=rf"unknown device '{name}' \(from --device\): use one of Ascend, GPU, CPU"):
        device.select_device(name)
    assert device._chosen is None


def test_choice_is_cached_and_cannot_change(monkeypatch):
    monkeypatch.delenv("MINDTRANS_DEVICE", raising=False)
    assert device.select_device() == "CPU"
    assert device.select_device("cpu") == "CPU"
    with pytest.raises(RuntimeError, match="device already set to CPU; restart the process to use GPU"):
        device.select_device("GPU")
