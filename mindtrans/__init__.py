"""mindtrans: learn the Transformer by building one in MindSpore.

Importing the package is cheap; MindSpore is imported by the submodules that need
it, the first time one of the names below is used.
"""
import importlib
import os

# MindSpore reads its log level when it is first imported: errors only, not internal warnings a
# user cannot act on ("Some side effect nodes were eliminated by mistake"). GLOG_v=2 shows them.
os.environ.setdefault("GLOG_v", "3")

__version__ = "0.1.0"

_LAZY = {
    "TransformerConfig": "mindtrans.config",
    "Transformer": "mindtrans.model",
    "count_parameters": "mindtrans.params",
    "estimate_parameters": "mindtrans.params",
    "select_device": "mindtrans.device",
    "fetch_multi30k": "mindtrans.fetch",
    "TrainConfig": "mindtrans.train_config",
    "train": "mindtrans.training",
    "Translator": "mindtrans.decode",
    "load_bundle": "mindtrans.bundle",
    "save_bundle": "mindtrans.bundle",
    "evaluate_bundle": "mindtrans.evaluate",
    "export_bundle": "mindtrans.export",
    "load_export": "mindtrans.exported",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mindtrans' has no attribute {name!r}")
