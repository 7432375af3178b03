"""TrainConfig: options defined once (the CLI's flags come from its fields), read back strictly."""
import argparse
import dataclasses

import pytest

from mindtrans.cli import build_parser
from mindtrans.train_config import RESUME_OVERRIDES, TrainConfig, add_arguments, flag, from_args


def test_every_field_is_a_flag_and_the_defaults_agree():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args([])) == TrainConfig()
    options = {action.dest: action.option_strings for action in parser._actions if action.dest != "help"}
    assert set(options) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert options["pack"] == ["--no-pack"] and options["max_steps"] == ["--max-steps"]


def test_the_train_command_spells_each_field_once():
    args = build_parser().parse_args(["train", "--out", "x", "--max-steps", "7", "--no-pack", "--dropout", "0.2",
                                      "--schedule", "linear"])
    cfg = from_args(args)
    assert (cfg.max_steps, cfg.pack, cfg.dropout, cfg.schedule) == (7, False, 0.2, "linear")
    assert cfg.differences(TrainConfig()) == {"max_steps": (7, 0), "pack": (False, True), "dropout": (0.2, None),
                                              "schedule": ("linear", "inverse_sqrt")}


def test_choices_are_checked_by_the_config_itself():
    with pytest.raises(ValueError, match=r"amp must be one of \('auto', 'on', 'off'\), got 'maybe'"):
        TrainConfig(amp="maybe")
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        TrainConfig(dropout=1.5)


def test_from_dict_is_strict_about_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['learning_rate'\]"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "learning_rate": 0.1})


def test_from_dict_reads_runs_saved_by_older_versions():
    saved = TrainConfig(pack=True).to_dict()
    del saved["pack"]  # saved before packing existed: length buckets
    saved["dropout"] = -1.0  # how older versions said "the preset's dropout"
    old = TrainConfig.from_dict(saved)
    assert old.pack is False and old.dropout is None
    assert TrainConfig.from_dict(TrainConfig(dropout=0.3).to_dict()) == TrainConfig(dropout=0.3)


def test_flags_of_the_resume_overrides():
    assert [flag(name) for name in RESUME_OVERRIDES] == ["--epochs", "--max-steps", "--max-minutes"]


def test_resume_keeps_the_run_s_own_limits_unless_given():
    saved = TrainConfig(epochs=100, max_steps=3800, max_minutes=59.0, lr=2e-3)
    parser = build_parser()
    alone = from_args(parser.parse_args(["train", "--out", "x", "--resume"]), saved)
    assert (alone.epochs, alone.max_steps, alone.max_minutes) == (100, 3800, 59.0)
    more = from_args(parser.parse_args(["train", "--out", "x", "--resume", "--max-steps", "0", "--epochs", "10"]),
                     saved)
    assert (more.epochs, more.max_steps, more.max_minutes) == (10, 0, 59.0)  # given, even at their defaults
    assert from_args(parser.parse_args(["train", "--out", "x"])).epochs == TrainConfig().epochs


def test_on_resume_a_flag_given_at_its_default_still_differs_from_the_saved_run():
    saved = TrainConfig(preset="tiny", lr=2e-3, pack=False)
    parser = build_parser()
    given = from_args(parser.parse_args(["train", "--out", "x", "--resume", "--preset", "small", "--lr", "0.002"]),
                      saved)
    assert given.differences(saved) == {"preset": ("small", "tiny")}  # --lr equals the saved value: no difference
    assert from_args(parser.parse_args(["train", "--out", "x", "--resume"]), saved) == saved


def test_typed_fields_of_a_saved_configuration():
    for field, value in (("epochs", "5"), ("lr", "0.1"), ("pack", 1), ("share_embeddings", "yes"), ("epochs", True)):
        with pytest.raises(ValueError, match=f"{field} must be"):
            TrainConfig.from_dict({**TrainConfig().to_dict(), field: value})
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "lr": 1, "heads": None}).lr == 1  # a whole number is a float
