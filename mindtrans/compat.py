"""MindSpore's API differences between 2.0 and 2.10, in one place.

The rest of mindtrans calls these functions instead of the version-specific APIs: the
newest spelling where the installed MindSpore has it, the older one where it does not.

- one graph for many shapes: `enable_dynamic` + `jit` (2.7+); `jit(input_signature=...)`
  (2.3 - 2.5); one graph per shape (2.6, and 2.0 - 2.2, whose dynamic shapes mistype this model);
- the device: `set_device` (2.5+); `set_context(device_target=...)` before;
- counting devices: `device_context` (2.5+); `hal.device_count` (2.3, 2.4); the driver (2.0 - 2.2);
- CPU threads: `device_context.cpu.op_tuning.threads_num` (2.5+); `set_context(runtime_num_threads)`.

`MINDTRANS_MS_API=2.3` (any version) makes mindtrans use only what that version has,
on the installed MindSpore: the tests run the older branches this way. Where an old
compiler cannot build a step, one line on stderr says so and names the fallback taken.
"""
import glob
import inspect
import os
import re
import sys

from mindtrans.files import first_line

SUPPORTED = ((2, 3), (2, 10))  # the versions the package is written for (README: compatibility table)

# feature -> (first version that has it, last version that has it or None)
FEATURES = {
    "enable_dynamic": ((2, 7), None),
    "jit_input_signature": ((2, 3), (2, 5)),  # 2.0 - 2.2 trace dynamic dimensions wrongly for this model
    "set_device": ((2, 5), None),
    "hal": ((2, 3), None),
}


def parse_version(text: str) -> tuple:
    """'2.6.0rc1' -> (2, 6, 0): the numeric release, pre-release tags ignored."""
    numbers = re.match(r"\d+(?:\.\d+)*", text.strip())
    if not numbers:
        raise ValueError(f"cannot read a version from {text!r}: expected something like 2.6.0")
    return tuple(int(part) for part in numbers.group(0).split("."))


def installed_version() -> tuple:
    import mindspore as ms

    return parse_version(ms.__version__)


def api_version() -> tuple:
    """The MindSpore API mindtrans writes for: the installed one, or `$MINDTRANS_MS_API` when older."""
    forced = os.environ.get("MINDTRANS_MS_API")
    installed = installed_version()
    return min(installed, parse_version(forced)) if forced else installed


def _present(feature: str) -> bool:
    import mindspore as ms

    if feature == "enable_dynamic":
        return hasattr(ms, "enable_dynamic")
    if feature == "jit_input_signature":
        return "input_signature" in inspect.signature(ms.jit).parameters
    if feature == "set_device":
        return hasattr(ms, "set_device")
    return hasattr(ms, feature)


def has(feature: str) -> bool:
    """Whether mindtrans may use `feature` (a key of FEATURES) on this MindSpore."""
    first, last = FEATURES[feature]
    version = api_version()[:2]
    return first <= version and (last is None or version <= last) and _present(feature)


def jit_dynamic(fn, signature: dict):
    """`fn` compiled with the shapes in `signature` (every parameter name -> a Tensor with
    `None` for each dimension that varies, or a tuple of them; a concrete tensor for a
    fixed shape): one graph for all shapes.

    2.7+: `enable_dynamic`; 2.3 - 2.5: `jit(input_signature=...)` in parameter order; 2.0 -
    2.2 and 2.6: plain `jit`, which compiles one graph per new shape (slower to start, more
    memory, same results). MindSpore 2.0's dynamic shapes fail on this model (a branch on
    a sequence length cannot be typed), so it is not given them.
    """
    import mindspore as ms

    names = list(inspect.signature(fn).parameters)
    if set(names) != set(signature):
        raise ValueError(f"signature names {sorted(signature)} must be exactly the parameters {names}")
    if has("enable_dynamic"):  # it takes only the arguments that have a dynamic dimension
        return ms.jit(ms.enable_dynamic(**{name: spec for name, spec in signature.items() if _varies(spec)})(fn))
    if has("jit_input_signature"):  # not installable here: if that compiler refuses, one graph per shape
        what, instead = f"{fn.__name__} with symbolic shapes", "compiling one graph per shape"
        try:
            signed = ms.jit(fn, input_signature=tuple(signature[name] for name in names))
        except (TypeError, ValueError) as error:
            _say_cannot_compile(what, error, instead)
            return ms.jit(fn)
        return first_that_runs(signed, lambda: ms.jit(fn), what, instead)
    return ms.jit(fn)


def compiled_or_eager(fn, what: str, signature: dict = None):
    """`fn` compiled (`jit_dynamic(fn, signature)`, or plain `jit` without a signature), or,
    on MindSpore 2.0 - 2.2, `fn` itself where that compiler cannot build it.

    MindSpore 2.0's compiler rejects a jit function that calls a Cell method other than
    `construct` (the packed train step, the decoding step: "Failed to find context for
    construct.Default"); there they run eagerly (PyNative): the same results, more slowly.
    From 2.3 on a compile error is an error.
    """
    import mindspore as ms

    compiled = jit_dynamic(fn, signature) if signature is not None else ms.jit(fn)
    if api_version()[:2] >= SUPPORTED[0]:
        return compiled
    return first_that_runs(compiled, lambda: fn, what, "running it eagerly (slower, same results; "
                                                        "MindSpore 2.3+ compiles it)")


def first_that_runs(preferred, make_fallback, what: str, instead: str):
    """A function that calls `preferred`, unless its first call fails to compile (RuntimeError,
    TypeError or ValueError): then one line on stderr says so and `make_fallback()` serves
    every call. An error of the fallback itself is raised."""
    chosen = []

    def call(*args):
        if not chosen:
            try:
                result = preferred(*args)
                chosen.append(preferred)
                return result
            except (RuntimeError, TypeError, ValueError) as error:
                _say_cannot_compile(what, error, instead)
                chosen.append(make_fallback())
        return chosen[0](*args)

    return call


def _say_cannot_compile(what: str, error: Exception, instead: str):
    import mindspore as ms

    print(f"mindtrans: MindSpore {ms.__version__} cannot compile {what} ({first_line(error, 100)}); {instead}",
          file=sys.stderr)


def _varies(spec) -> bool:
    """Whether a signature entry (a Tensor, or a tuple of them) has a dimension marked None."""
    if isinstance(spec, (tuple, list)):
        return any(_varies(item) for item in spec)
    return spec.shape is None or any(dim is None or dim < 0 for dim in spec.shape)


def adam(params, **kwargs):
    """`nn.Adam(params, **kwargs)`. From 2.8 its constructor also builds a sparse kernel that
    mindtrans never uses and logs that the kernel is deprecated: that one line is dropped."""
    import logging

    from mindspore import log, nn

    class DropSparseAdamNotice(logging.Filter):
        def filter(self, record):
            return "'FusedSparseAdam' is deprecated" not in record.getMessage()

    logger, notice = log._get_logger(), DropSparseAdamNotice()
    logger.addFilter(notice)
    try:
        return nn.Adam(params, **kwargs)
    finally:
        logger.removeFilter(notice)


class quiet_mindspore_log:
    """A block in which MindSpore's own log lines are off: mindtrans reports its errors itself
    (a failed save otherwise adds MindSpore's guess "Maybe don't have the permission ...")."""

    def __enter__(self):
        from mindspore import log

        self.logger = log._get_logger()
        self.was_disabled, self.logger.disabled = self.logger.disabled, True

    def __exit__(self, *exc):
        self.logger.disabled = self.was_disabled


def set_device(name: str):
    """Make `name` ("Ascend", "GPU" or "CPU") MindSpore's device for this process."""
    import mindspore as ms

    if has("set_device"):
        ms.set_device(name)
    else:
        ms.set_context(device_target=name)


def device_count(name: str) -> int:
    """Usable `name` devices ("Ascend" or "GPU"); 0 where this MindSpore build or machine has none."""
    import mindspore as ms
    from mindspore._c_expression import MSContext  # the check behind is_available(), minus its warnings

    supports = getattr(MSContext.get_instance(), "is_pkg_support_device", None)
    if supports is not None and not supports(name):
        return 0
    if has("set_device"):
        import mindspore.device_context as dc

        return getattr(dc, name.lower()).device_count()
    if has("hal"):
        return ms.hal.device_count(name)
    return _driver_device_count(name)


def _driver_device_count(name: str) -> int:
    """Devices the driver reports, for MindSpore 2.0 - 2.2, which cannot count them itself."""
    if name == "Ascend":
        return len(glob.glob("/dev/davinci[0-9]*"))
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def set_cpu_threads(count: int):
    """Run MindSpore's CPU kernels on `count` threads (once per process)."""
    import mindspore as ms

    if has("set_device"):
        import mindspore.device_context as dc

        dc.cpu.op_tuning.threads_num(count)
    else:
        ms.set_context(runtime_num_threads=count)


def cann_version() -> str:
    """The Ascend CANN toolkit's version where one is installed (`ascend_toolkit_install.info`), else ''."""
    homes = (os.environ.get("ASCEND_HOME_PATH"), os.environ.get("ASCEND_TOOLKIT_HOME"),
             "/usr/local/Ascend/ascend-toolkit/latest")
    for home in filter(None, homes):
        for path in sorted(glob.glob(os.path.join(home, "*-linux", "ascend_toolkit_install.info"))):
            with open(path, encoding="utf-8", errors="replace") as f:
                found = re.search(r"^version=(\S+)", f.read(), re.MULTILINE)
            if found:
                return found.group(1)
    return ""


def environment_report(device: str = None) -> list:
    """Lines for a bug report: Python, MindSpore (and whether it is in the tested range), CANN, device."""
    import platform

    import mindspore as ms

    lines = [f"Python     {platform.python_version()} ({platform.machine()})",
             f"MindSpore  {ms.__version__}"]
    version = installed_version()[:2]
    low, high = SUPPORTED
    if not low <= version <= high:
        lines.append(f"warning: MindSpore {ms.__version__} is outside the range mindtrans is written for "
                     f"({'.'.join(map(str, low))} - {'.'.join(map(str, high))}): see the README's compatibility table")
    if os.environ.get("MINDTRANS_MS_API"):
        lines.append(f"API        limited to MindSpore {os.environ['MINDTRANS_MS_API']} (MINDTRANS_MS_API)")
    cann = cann_version()
    lines.append(f"CANN       {cann or 'not installed (needed on Ascend only)'}")
    if device:
        lines.append(f"device     {device}")
    return lines
