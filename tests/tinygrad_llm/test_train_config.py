"""How a preset, a TOML file, --set and keywords combine: a preset brings its shape and its recipe."""

from __future__ import annotations

from tinygrad_llm.train import TrainConfig, resolve_config


def test_the_small_preset_brings_its_learning_rate_and_rotary_positions():
    model, train = resolve_config("small", time_budget=60.0)
    assert train.lr == 2e-3 and model["pos"] == "rope"
    assert resolve_config(None, time_budget=60.0)[1].lr == 2e-3  # small is the default preset


def test_anything_the_user_sets_wins_over_the_recipe(tmp_path):
    assert resolve_config("small", overrides=["lr=5e-4"], time_budget=60.0)[1].lr == 5e-4
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "small"\n[train]\nlr = 3e-4\n')
    assert resolve_config(toml_path=toml, time_budget=60.0)[1].lr == 3e-4
    assert resolve_config("small", toml_path=toml, overrides=["lr=1e-4"], time_budget=60.0)[1].lr == 1e-4


def test_presets_without_a_recipe_keep_the_train_config_defaults():
    assert resolve_config("tiny", time_budget=60.0)[1].lr == TrainConfig.lr == 1e-3
    assert resolve_config("gpt2-124m", time_budget=60.0)[1].lr == 1e-3


def test_a_resumed_run_keeps_the_learning_rate_it_was_saved_with():
    _, saved = resolve_config("tiny", overrides=["lr=7e-4"], time_budget=60.0)
    info = {"train_config": saved.__dict__, "model_config": resolve_config("small", time_budget=60.0)[0]}
    assert resolve_config(resume_from=info)[1].lr == 7e-4
