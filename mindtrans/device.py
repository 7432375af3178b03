"""Pick the device once: Ascend, then GPU, then CPU, or what `MINDTRANS_DEVICE` forces."""
import os

from mindtrans import compat

DEVICES = ("Ascend", "GPU", "CPU")
_chosen = None


def available_devices() -> list:
    """The devices this MindSpore install can really use, best first."""
    found = []
    for name in ("Ascend", "GPU"):
        try:
            if compat.device_count(name) > 0:
                found.append(name)
        except (RuntimeError, ValueError):  # plugin present but no usable device/driver
            pass
    return found + ["CPU"]


def cpu_threads() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def select_device(name: str = None, verbose: bool = True) -> str:
    """Set MindSpore's device and return its name ("Ascend", "GPU" or "CPU").

    `name`, else `$MINDTRANS_DEVICE`, forces a device; an unavailable one raises
    `RuntimeError` naming those that are. On CPU every core is put to work.
    Later calls return the first choice (MindSpore cannot switch devices).
    """
    global _chosen
    requested = name or os.environ.get("MINDTRANS_DEVICE") or None
    source = "--device" if name else "MINDTRANS_DEVICE"  # where the request came from, for the messages
    if _chosen is not None:
        if requested and requested.lower() != _chosen.lower():
            raise RuntimeError(f"device already set to {_chosen}; restart the process to use {requested}")
        return _chosen
    import mindspore as ms

    available = available_devices()
    if requested:
        matches = [d for d in DEVICES if d.lower() == requested.lower()]
        if not matches:
            raise ValueError(f"unknown device {requested!r} (from {source}): use one of {', '.join(DEVICES)}")
        if matches[0] not in available:
            fix = "pass one of those" if name else "unset MINDTRANS_DEVICE or set it to one of those"
            raise RuntimeError(f"device {matches[0]} (from {source}) is not available here; available: "
                               f"{', '.join(available)}: {fix}")
        device = matches[0]
    else:
        device = available[0]
    compat.set_device(device)
    if device == "CPU":
        compat.set_cpu_threads(cpu_threads())
    _chosen = device
    if verbose:
        extra = f" ({cpu_threads()} threads)" if device == "CPU" else ""
        print(f"mindtrans: using {device}{extra}, MindSpore {ms.__version__}")
    return device
