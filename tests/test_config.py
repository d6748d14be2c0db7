"""Config composition, typed schemas and start-up errors."""

from __future__ import annotations

import pytest

from bertforge.config import Config
from bertforge.errors import ConfigError
from bertforge.pipeline.graph import Pipeline
from bertforge.pipeline.overrides import check_overrides, unknown_key_message
from conftest import CONF, compose

GROUP_OPTIONS = {
    group.name: sorted(p.stem for p in group.glob("*.yaml"))
    for group in CONF.iterdir()
    if group.is_dir()
    and group.name not in ("hydra", "experiment", "hparams_search", "benchmark", "sweeps")
}
REQUIRED = {  # options that need a key the user must give
    ("corpus", "text_files"): ["corpus.path=some/dir"],
    ("corpus", "hf_dataset"): ["corpus.name=wikitext", "corpus.config_name=wikitext-2-raw-v1"],
    ("task", "local_files"): [
        "task.train_file=a.csv",
        "task.validation_file=b.csv",
        "task.text_columns=[text]",
    ],
}


@pytest.mark.parametrize(
    ("group", "option"),
    [(group, option) for group, options in GROUP_OPTIONS.items() for option in options],
)
def test_every_config_file_composes(group, option):
    cfg = compose(f"{group}={option}", *REQUIRED.get((group, option), []))
    assert isinstance(cfg, Config)


def test_model_presets_match_turc_et_al():
    expected = {
        "bert_tiny": (2, 128, 2), "bert_mini": (4, 256, 4), "bert_small": (4, 512, 8),
        "bert_medium": (8, 512, 8), "bert_base": (12, 768, 12), "bert_large": (24, 1024, 16),
    }  # fmt: skip
    for name, (layers, hidden, heads) in expected.items():
        m = compose(f"model={name}").model
        assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads) == (
            layers,
            hidden,
            heads,
        )
        assert m.intermediate_size == 4 * hidden
    assert compose().model.name == "bert_tiny"


def test_unknown_key_names_the_allowed_keys():
    message = unknown_key_message("pretrain.mask_rat")
    assert "did you mean 'mask_rate'" in message
    assert "max_steps" in message and "objective" in message
    assert unknown_key_message("pretrain.mask_rate") is None
    assert unknown_key_message("model") is None  # a group switch
    assert "keys under the top level" in unknown_key_message("sed")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["model.hidden_size=130", "model.num_attention_heads=4"], "not divisible"),
        (["pretrain.mask_rate=0"], "pretrain.mask_rate"),
        (["pretrain.mask_rate=1.5"], "strictly between 0 and 1"),
        (["pretrain.max_seq_length=1024"], "model.max_position_embeddings"),
        (["pretrain.max_seq_length=1"], "at least 8"),
        (["tokenizer.vocab_size=4"], "special tokens"),
        (["pretrain.objective=mlm"], "mlm_nsp, mlm_only"),
        (["finetune.init=hf"], "finetune.hf_model"),
        (["pretrain.init=hf"], "pretrain.hf_model"),
        (["pretrain.init=hf", "pretrain.hf_model=/ckpt"], "tokenizer.source=hf tokenizer.hf_model"),
        (["tokenizer.source=hf"], "tokenizer.hf_model"),
        (["pretrain.lr_schedule=cosine"], "linear, trapezoidal, one_cycle"),
        (
            [
                "pretrain.lr_schedule=trapezoidal",
                "pretrain.warmup_ratio=0.5",
                "pretrain.decay_ratio=0.6",
            ],
            "lower one of them",
        ),
    ],
)
def test_bad_values_fail_at_start_up(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        compose(*overrides)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["pretrain.mask_rat=0.2"], "unknown config key 'pretrain.mask_rat'"),
        (["pretrain.mask_rate=2"], "pretrain.mask_rate=2.0 must lie strictly between"),
        (["model.hidden_size=130", "model.num_attention_heads=4"], "model.num_attention_heads=4"),
    ],
)
def test_start_up_check_reports_one_line_and_exits_2(overrides, fragment, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        check_overrides([*overrides, f"paths.outputs={tmp_path}"])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert not (tmp_path / "artifacts").exists()


def test_unknown_group_option_lists_the_presets(tmp_path, capsys):
    with pytest.raises(SystemExit):
        check_overrides(["model=bert_huge", f"paths.outputs={tmp_path}"])
    err = capsys.readouterr().err
    assert "bert_huge" in err
    for preset in GROUP_OPTIONS["model"]:
        assert preset in err


def test_unknown_stage_names_the_stages():
    with pytest.raises(ConfigError, match="pretrian, not a stage; choose from tokenizer, "):
        Pipeline(compose("stages=[tokenizer,pretrian]")).wanted()


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", [*EXPERIMENTS, "[cpu_budget,low_resource]"])
def test_every_experiment_composes_with_its_sweep(name):
    """An ablation sweeps seeds (of the whole pipeline or of fine-tuning only); a recipe such
    as cpu_budget sweeps nothing."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    if name != "cpu_budget":
        assert {"seed", "finetune.seeds"} & set(params) and len(cfg.report_metrics) >= 1
    compose(f"+experiment={name}")  # the typed config accepts it


def test_optuna_search_composes():
    cfg = compose("hparams_search=finetune_optuna")
    assert cfg.optimized_metric == "finetune/val_accuracy"  # selection on validation only


def test_quoted_and_interpolated_outputs_are_checked_where_hydra_will_write(tmp_path, monkeypatch):
    """#14.6: `paths.outputs='/x/o'` created `./'/x/o'/` and `${oc.env:X}/o` created
    `./${oc.env:X}/o`: the start-up check tested the raw string. It resolves values as Hydra
    will, so it prepares (and checks the writability of) the directory the run will use."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BERTFORGE_TEST_OUT", str(tmp_path / "from env"))
    check_overrides([f"paths.outputs='{tmp_path}/quoted dir/o'"])
    check_overrides(["paths.outputs=${oc.env:BERTFORGE_TEST_OUT}/o"])
    assert (tmp_path / "quoted dir" / "o").is_dir() and (tmp_path / "from env" / "o").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["from env", "quoted dir"]
