"""Model bundles: the files of a run directory that translation needs, saved and loaded.

A bundle is config.json, src_vocab.json, tgt_vocab.json and model.ckpt (the layout is
`mindtrans.rundir.RunDir`'s); a training run directory is one, with more files beside.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from mindtrans.config import TransformerConfig
from mindtrans.data import Vocab
from mindtrans.subword import is_subword_file, load_vocab
from mindtrans.rundir import RunDir


class BundleError(ValueError):
    """A bundle is incomplete, inconsistent or corrupt; the message says which file."""


@dataclass
class Bundle:
    """A loaded model with its vocabularies; `translator()` makes it translate."""

    path: Path
    config: TransformerConfig
    model: object
    src_vocab: Vocab
    tgt_vocab: Vocab
    metadata: dict = field(default_factory=dict)

    def translator(self, **kwargs):
        from mindtrans.decode import Translator

        return Translator(self.model, self.src_vocab, self.tgt_vocab, **kwargs)


def save_bundle(path, model, src_vocab: Vocab, tgt_vocab: Vocab, metadata: dict = None) -> RunDir:
    """Write `model` (its config and weights) and the vocabularies as a bundle in `path`."""
    from mindtrans import checkpoint

    run = RunDir(path)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_json(RunDir.CONFIG, model.config.to_dict())
    src_vocab.save(run / RunDir.SRC_VOCAB)
    tgt_vocab.save(run / RunDir.TGT_VOCAB)
    checkpoint.atomic_save(model, run.model)
    if metadata is not None:
        run.update_metadata(metadata)
    run.record_digests()
    return run


ENGINES = ("mindspore", "numpy")  # what runs a loaded model: a MindSpore `Transformer`, or `NumpySteps` (CPU)


def load_bundle(path, weights: str = RunDir.MODEL, engine: str = "mindspore") -> Bundle:
    """Rebuild the model saved in bundle directory `path`, in inference mode.

    `engine` "numpy" gives a `mindtrans.numpy_steps.NumpySteps` instead of a `Transformer`:
    it only translates, on the CPU, and never imports MindSpore. Raises BundleError naming the
    problem: a missing file, a config that does not describe the saved weights, vocabularies
    that do not fit the config, corrupt weights.
    """
    from mindtrans import checkpoint

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    run = RunDir(path)
    if not run.path.is_dir():
        raise BundleError(f"{run.path} is not a directory; pass the run directory written by `mindtrans train`")
    missing = [name for name in RunDir.BUNDLE[:3] + (weights,) if not (run / name).is_file()]
    if missing:
        hint = ""
        if run.is_export():
            hint = " (it is an export: give its run directory, or translate with the export itself)"
        elif missing == [RunDir.MODEL] and run.latest.is_file():
            hint = (f" (its training stopped before the first validation wrote it: continue with "
                    f"`mindtrans train --out {run.path} --resume`)")
        raise BundleError(f"bundle {run.path} is missing {', '.join(missing)}{hint}")
    config, src_vocab, tgt_vocab = _read_config_and_vocabs(run)
    weights_only = weights != RunDir.MODEL
    try:
        saved, _ = checkpoint.load(run / weights)
        model = _numpy_model(config, saved, run / weights, weights_only) if engine == "numpy" else \
            _mindspore_model(config, saved, run / weights, weights_only)
    except ValueError as err:
        raise BundleError(str(err)) from err
    _check_unchanged(run, RunDir.BUNDLE[:3] + (weights,))
    return Bundle(run.path, config, model, src_vocab, tgt_vocab, run.metadata())


def _mindspore_model(config, saved: dict, path, weights_only: bool):
    from mindtrans import checkpoint
    from mindtrans.model import Transformer

    model = Transformer(config)
    checkpoint.restore(model.get_parameters(), saved, path, source=RunDir.CONFIG, weights_only=weights_only)
    model.set_train(False)
    return model


def _numpy_model(config, saved: dict, path, weights_only: bool):
    import numpy as np

    from mindtrans import checkpoint
    from mindtrans.numpy_steps import NumpySteps, parameter_shapes

    expected = {name: (shape, np.dtype(np.float32)) for name, shape in parameter_shapes(config).items()}
    checkpoint.check_weights(saved, expected, path, source=RunDir.CONFIG, weights_only=weights_only)
    return NumpySteps(config, saved)


def _check_unchanged(run: RunDir, names) -> None:
    """BundleError naming the first of `names` whose sha256 is not the one metadata.json records."""
    try:
        changed = run.changed_files(names)
    except ValueError as err:
        raise BundleError(str(err)) from None
    if changed:
        raise BundleError(f"{run / changed[0]} changed after the bundle was saved (its sha256 is not the one "
                          f"{RunDir.METADATA} records): restore the original file, or train the model again")


def _read_config_and_vocabs(run: RunDir) -> tuple:
    """(TransformerConfig, source Vocab, target Vocab) of a bundle, checked against each other."""
    try:
        config = TransformerConfig.from_dict(json.loads((run / RunDir.CONFIG).read_text()))
    except (ValueError, TypeError) as err:
        raise BundleError(f"{run / RunDir.CONFIG} is not a valid model config: {err}") from err
    # A subword model is parsed by sentencepiece's native code: only once it is the file that was saved.
    _check_unchanged(run, [name for name in (RunDir.SRC_VOCAB, RunDir.TGT_VOCAB) if is_subword_file(run / name)])
    try:
        src_vocab, tgt_vocab = load_vocab(run / RunDir.SRC_VOCAB), load_vocab(run / RunDir.TGT_VOCAB)
    except ValueError as err:
        raise BundleError(str(err)) from err
    for name, vocab, size in ((RunDir.SRC_VOCAB, src_vocab, config.src_vocab_size),
                              (RunDir.TGT_VOCAB, tgt_vocab, config.tgt_vocab_size)):
        if len(vocab) != size:
            raise BundleError(f"{run / name} has {len(vocab)} tokens but config.json expects {size}")
    return config, src_vocab, tgt_vocab
