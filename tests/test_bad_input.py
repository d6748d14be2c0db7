"""One catalogue of bad input, every stage, run the way an entry point runs it.

Every case must end the same way: exit status 2, stderr's last non-empty line is the only
`error: ...` line and names the fix (a config key, a file, the allowed values), no Python
traceback, and no `manifest.json` for the stage that failed (nothing half-written looks
complete). Cases that fail at start-up (the config, or a stage's inputs checked before anything
builds) must leave no artifacts at all; the others run against a copy of the session's tiny
pretraining. The cases run in-process: `check_overrides` then `run_pipeline`, the two calls of
every `pipelines/*.py` (an exception other than the exit would fail the test as a traceback
would); `test_entry_points_exit_2_with_one_line` runs real scripts for two of them.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from bertforge.pipeline.cli import run_pipeline
from bertforge.pipeline.overrides import check_overrides
from conftest import CONF, TINY, copy_outputs, run_entry_point

MANIFEST = "manifest.json"
EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Case:
    """`args` may name `{inputs}` (the bad files below), `{hf}` (a good HF checkpoint
    directory) and `{glue}` (a GLUE root with a bad RTE label)."""

    script: str
    args: tuple[str, ...]
    fragment: str  # what the error line must contain: the key, file or allowed values
    stage: str | None = None  # the stage that fails at run time; None: fails at start-up
    check: Callable[[Path], None] | None = field(default=None, compare=False)


def case(id_: str, script: str, args: list[str], fragment: str, stage: str | None = None, **kw):
    return pytest.param(Case(script, tuple(args), fragment, stage, **kw), id=id_)


# --- Inputs ----------------------------------------------------------------------------------


def write_bad_files(inputs: Path) -> None:
    """Small task files, corpora and GLUE directories, each wrong in one way."""
    inputs.mkdir(parents=True, exist_ok=True)
    good = "text,label\nwhat a film,pos\ndull and long,neg\nloved it,pos\nawful,neg\n"
    (inputs / "good.csv").write_text(good, encoding="utf-8")
    (inputs / "dup_columns.csv").write_text("text,text,label\na,b,pos\nc,d,neg\n")
    (inputs / "cp1252.csv").write_bytes(
        "text,label\ncaf\xe9 cr\xe8me,pos\nbad,neg\n".encode("cp1252")
    )
    (inputs / "empty.csv").write_bytes(b"")
    (inputs / "empty_label.csv").write_text("text,label\nwhat a film,pos \nmeh,\nawful,neg\n")
    (inputs / "scores.csv").write_text("text,score\nclose,4.5\nfar,high\n", encoding="utf-8")
    (inputs / "corpus_cp1252.txt").write_bytes(
        "The caf\xe9 opened in March. Prices rose \x80 5 a cup.".encode("latin-1")
    )
    (inputs / "corpus_empty.txt").write_bytes(b"")
    (inputs / "corpus_one_doc.txt").write_text(
        "".join(f"Sentence number {n} of the only document. " for n in range(300)) + "\n"
    )
    rte = inputs / "glue" / "RTE"
    rte.mkdir(parents=True, exist_ok=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    (rte / "train.tsv").write_text(
        header + "0\tA dog runs.\tAn animal moves.\tentailment\n1\tIt rains.\tIt is dry.\tmaybe\n"
    )
    (rte / "dev.tsv").write_text(header + "0\tA cat sleeps.\tA cat rests.\tentailment\n")


class _Exploit:
    """Unpickling this runs a shell command: what a malicious pytorch_model.bin does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_bad_checkpoints(hf: Path, inputs: Path) -> None:
    """Copies of a good HF checkpoint directory, each broken in one way."""

    def copy(name: str) -> Path:
        target = inputs / name
        shutil.copytree(hf, target)
        return target

    weights = (hf / "model.safetensors").read_bytes()
    (copy("truncated") / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (copy("zero_byte") / "model.safetensors").write_bytes(b"")
    (copy("no_config") / "config.json").unlink()
    (copy("bad_tokenizer") / "tokenizer.json").write_text('{"version": "1.0", "model": ')

    pickled = copy("pickle")
    (pickled / "model.safetensors").unlink()
    with open(pickled / "pytorch_model.bin", "wb") as f:
        payload = {"embeddings.word_embeddings.weight": _Exploit(inputs / "pwned")}
        pickle.dump(payload, f, protocol=2)

    # A tokenizer of another model (30,522 tokens) next to an 800-token embedding table.
    big = copy("foreign_tokenizer")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    vocab |= {f"word{i}": i + 5 for i in range(30522 - 5)}
    foreign = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    foreign.pre_tokenizer = pre_tokenizers.Whitespace()
    foreign.save(str(big / "tokenizer.json"))
    # A tokenizer of 77 tokens (with BERT's special tokens) next to the 800-token table.
    small_vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])}
    small_vocab |= {"[MASK]": 4} | {f"word{i}": i + 5 for i in range(72)}
    small = Tokenizer(models.WordPiece(small_vocab, unk_token="[UNK]"))
    small.pre_tokenizer = pre_tokenizers.Whitespace()
    small.save(str(copy("small_tokenizer") / "tokenizer.json"))

    wrong_vocab = copy("config_vocab")
    config = json.loads((hf / "config.json").read_text())
    (wrong_vocab / "config.json").write_text(json.dumps({**config, "vocab_size": 900}))

    # A fine-tuned head of 5 classes whose config.json lists 3 labels.
    from bertforge.hf import export_hf, load_hf_checkpoint

    head = copy("num_labels")
    model, model_config = load_hf_checkpoint(hf, target="classification", num_labels=5)
    export_hf(model, model_config, head)
    config = json.loads((head / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(["neg", "neu", "pos"])}
    config["label2id"] = {name: int(i) for i, name in config["id2label"].items()}
    (head / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def shared(tiny_upstream, tmp_path_factory) -> dict[str, Path]:
    """A copy of the tiny pretraining (tokenizer, pretrain_data, pretrain) and the bad inputs."""
    outputs = copy_outputs(tiny_upstream, tmp_path_factory.mktemp("outputs"))
    (hf,) = (outputs / "artifacts" / "pretrain").glob("*/hf")
    inputs = tmp_path_factory.mktemp("inputs")
    write_bad_files(inputs)
    write_bad_checkpoints(hf, inputs)
    return {"outputs": outputs, "inputs": inputs, "hf": hf}


def no_code_ran(inputs: Path) -> None:
    assert not (inputs / "pwned").exists(), "the pickle's payload ran"


# --- The catalogue -----------------------------------------------------------------------------

HF_INIT = ["finetune.init=hf", "finetune.hf_model={hf}"]  # no upstream stage to build
LOCAL = [  # a local-files task that starts from the HF checkpoint
    "task=local_files", "task.validation_file={inputs}/good.csv", "task.text_columns=[text]",
    *HF_INIT,
]  # fmt: skip
FAST_VIZ = [
    "extract.source=pretrain", "extract.words=[]", "visualize.n_jobs=1",
    "visualize.compare_methods=false", "visualize.attention_sentences=[]",
]  # fmt: skip

CASES = [
    # -- start-up: the typed config -----------------------------------------------------------
    case("unknown-key-did-you-mean", "pretrain.py", ["pretrain.mask_rat=0.2"],
         "unknown config key 'pretrain.mask_rat' (did you mean 'mask_rate'?)"),
    case("unknown-group-option", "run.py", ["model=bert_huge"],
         "model=bert_huge is not an option of the model group; choose one of bert_base"),
    case("unknown-key-lists-the-keys", "finetune.py", ["finetune.seed=1"],
         "(did you mean 'seeds'?); keys under finetune:"),
    case("hidden-size-not-divisible-by-heads", "run.py",
         ["model.hidden_size=130", "model.num_attention_heads=4"],
         "choose a hidden size that is a multiple of the head count"),
    case("zero-attention-heads", "pretrain.py", ["model.num_attention_heads=0"],
         "model.num_attention_heads=0 must be a positive integer"),
    case("negative-hidden-size", "pretrain.py", ["model.hidden_size=-128"],
         "model.hidden_size=-128 must be a positive integer"),
    case("zero-batch-size", "pretrain.py", ["pretrain.global_batch_size=0"],
         "pretrain.global_batch_size=0 must be >= 1"),
    case("pretrain-max-seq-length-1", "pretrain.py", ["pretrain.max_seq_length=1"],
         "pretrain.max_seq_length=1 is too short for [CLS] A [SEP] B [SEP]; use at least 8"),
    case("finetune-max-seq-length-1", "finetune.py", ["finetune.max_seq_length=1"],
         "finetune.max_seq_length=1 must be >= 4"),
    case("extract-max-seq-length-1", "extract.py", ["extract.max_seq_length=1"],
         "extract.max_seq_length=1 leaves no room for text beside [CLS] and [SEP]; use at least 4"),
    case("zero-max-examples", "finetune.py", ["task.max_examples=0"],
         "task.max_examples=0 must be >= 1"),
    case("zero-knn-k", "visualize.py", ["visualize.knn_k=0"], "visualize.knn_k=0 must be >= 1"),
    case("unknown-finetune-init", "finetune.py", ["finetune.init=bert"],
         "finetune.init='bert' is not one of pretrained, hf, random"),
    case("unknown-visualize-method", "visualize.py", ["visualize.method=tsen"],
         "visualize.method='tsen' is not one of tsne, umap, pca"),
    case("unknown-pooling", "extract.py", ["extract.pooling=max"],
         "extract.pooling='max' is not one of cls, mean"),
    case("hf-init-without-hf-model", "finetune.py", ["finetune.init=hf"],
         "finetune.init=hf needs finetune.hf_model="),
    case("nsp-metric-with-mlm-only", "pretrain.py",
         ["pretrain.objective=mlm_only", "optimized_metric=pretrain/val_nsp_accuracy"],
         "use pretrain.objective=mlm_nsp or an MLM metric"),
    case("repeated-seeds", "finetune.py", ["finetune.seeds=[1,1]"],
         "finetune.seeds=[1, 1] repeats 1; give each seed once"),
    case("sklearn-tsne-with-dof", "visualize.py",
         ["visualize.tsne_backend=sklearn", "visualize.dof=10", "visualize.snapshots=[]"],
         "sklearn's TSNE has no dof; set visualize.dof=1"),
    case("local-files-without-text-columns", "finetune.py",
         ["task=local_files", "task.train_file=a.csv", "task.validation_file=b.csv"],
         "task=local_files needs task.text_columns=[col]"),
    case("nan-learning-rate", "pretrain.py", ["pretrain.lr=nan"],
         "pretrain.lr=nan must be a positive finite number"),
    case("negative-finetune-lr", "finetune.py", ["finetune.lr=-1e-3"],
         "finetune.lr=-0.001 must be a positive finite number"),
    case("zero-finetune-lr", "finetune.py", ["finetune.lr=0"],
         "finetune.lr=0.0 must be a positive finite number"),
    case("warmup-ratio-above-one", "pretrain.py", ["pretrain.warmup_ratio=1.5"],
         "pretrain.warmup_ratio=1.5 must lie in [0, 1]"),
    case("negative-finetune-warmup", "finetune.py", ["finetune.warmup_ratio=-0.1"],
         "finetune.warmup_ratio=-0.1 must lie in [0, 1]"),
    case("negative-seed", "run.py", ["seed=-1"], "seed=-1 is outside 0..4294967295"),
    case("seed-beyond-32-bits", "run.py", ["seed=5000000000"],
         "seed=5000000000 is outside 0..4294967295; use a 32-bit unsigned seed"),
    case("negative-finetune-seed", "finetune.py", ["finetune.seeds=[1,-2]"],
         "finetune.seeds=-2 is outside 0..4294967295"),
    case("negative-threads", "pretrain.py", ["trainer.num_threads=-1"],
         "trainer.num_threads=-1 must be >= 1"),
    case("nothing-to-do", "run.py", ["stages=[]"], "stages=[] leaves nothing to do"),
    case("stages-not-a-list", "run.py", ["stages=tokenizer"],
         "stages: Invalid value assigned: str is not a ListConfig, list or tuple"),
    case("text-columns-not-a-list", "finetune.py", [*LOCAL, "task.train_file={inputs}/good.csv",
         "task.text_columns=document"], "task.text_columns: Invalid value assigned"),
    case("unknown-stage", "run.py", ["stages=[tokenizer,pretrian]"],
         "stages=['tokenizer', 'pretrian'] names pretrian, not a stage; choose from tokenizer"),
    case("derived-model-key", "pretrain.py", ["model.vocab_size=1000"],
         "model.vocab_size is taken from the tokenizer (tokenizer.vocab_size); remove the "
         "override"),
    case("selection-on-test", "finetune.py", ["optimized_metric=finetune/test_accuracy"],
         "selects on the test split; optimise a validation metric instead, e.g. "
         "optimized_metric=finetune/val_accuracy"),
    case("outputs-is-a-file", "run.py", ["paths.outputs={inputs}/good.csv"],
         "good.csv is a file, not a directory; set paths.outputs to a directory"),
    case("outputs-under-proc", "run.py", ["paths.outputs=/proc/bertforge/outputs"],
         "paths.outputs=/proc/bertforge/outputs is not writable"),
    case("task-data-dir-missing", "finetune.py",
         ["task=rte", "task.data_dir={inputs}/no_glue", *HF_INIT],
         "task.data_dir={inputs}/no_glue does not exist"),
    case("hf-model-missing", "finetune.py",
         ["finetune.init=hf", "finetune.hf_model={inputs}/no_model"],
         "finetune.hf_model={inputs}/no_model does not exist"),
    # -- HF checkpoints (finetune.init=hf, extract.source=hf) ----------------------------------
    case("truncated-safetensors", "finetune.py", ["finetune.init=hf",
         "finetune.hf_model={inputs}/truncated"],
         "truncated/model.safetensors is truncated or not a safetensors file; re-export it",
         "finetune"),
    case("zero-byte-safetensors", "extract.py",
         ["extract.source=hf", "extract.hf_model={inputs}/zero_byte"],
         "zero_byte/model.safetensors is truncated or not a safetensors file", "extract"),
    case("malicious-pickle", "finetune.py",
         ["finetune.init=hf", "finetune.hf_model={inputs}/pickle"],
         "refused by safe loading (torch.load weights_only=True)", "finetune",
         check=no_code_ran),
    case("hf-dir-missing-config", "extract.py",
         ["extract.source=hf", "extract.hf_model={inputs}/no_config"],
         "no_config/config.json not found; a Hugging Face checkpoint directory needs config.json",
         "extract"),
    case("corrupt-tokenizer-json", "extract.py",
         ["extract.source=hf", "extract.hf_model={inputs}/bad_tokenizer"],
         "bad_tokenizer/tokenizer.json is not a readable tokenizer file; save the checkpoint's "
         "tokenizer", "extract"),
    case("tokenizer-larger-than-model-vocab", "finetune.py",
         ["finetune.init=hf", "finetune.hf_model={inputs}/foreign_tokenizer"],
         "has 30522 tokens but the model's vocab_size is 800", "finetune"),
    case("tokenizer-far-smaller-than-model-vocab", "finetune.py",
         ["finetune.init=hf", "finetune.hf_model={inputs}/small_tokenizer"],
         "has 77 tokens but the model's vocab_size is 800", "finetune"),
    case("config-vocab-size-disagrees-with-weights", "extract.py",
         ["extract.source=hf", "extract.hf_model={inputs}/config_vocab"],
         "checkpoint shape (800, 128) does not match the model's (900, 128); check the config "
         "(e.g. num_labels, vocab_size)", "extract"),
    case("num-labels-disagree-with-classifier", "finetune.py",
         ["finetune.init=hf", "finetune.hf_model={inputs}/num_labels"],
         "gives 3 labels (id2label/num_labels) but its classifier.weight has 5 rows", "finetune"),
    # -- tasks --------------------------------------------------------------------------------
    case("missing-task-data-dir", "finetune.py", ["task=rte", *HF_INIT],
         "task=rte reads local GLUE files: set task.data_dir=<glue_data dir>", "finetune"),
    case("label-outside-the-task-set", "finetune.py",
         ["task=rte", "task.data_dir={inputs}/glue", *HF_INIT],
         "line 3: label 'maybe' is not one of entailment, not_entailment", "finetune"),
    case("label-outside-label-names", "finetune.py",
         [*LOCAL, "task.train_file={inputs}/good.csv", "task.label_names=[pos,neu]"],
         "label 'neg' is not one of pos, neu; fix the row or list every label in "
         "task.label_names", "finetune"),
    case("non-numeric-regression-label", "finetune.py",
         [*LOCAL, "task.train_file={inputs}/scores.csv",
          "task.validation_file={inputs}/scores.csv", "task.label_column=score",
          "task.task_type=regression"],
         "'score' value 'high' is not a number", "finetune"),
    case("missing-column", "finetune.py",
         [*LOCAL, "task.train_file={inputs}/good.csv", "task.text_columns=[review]"],
         "has no column 'review'; columns found: text, label; set task.text_columns",
         "finetune"),
    case("duplicated-columns", "finetune.py", [*LOCAL, "task.train_file={inputs}/dup_columns.csv"],
         "has duplicated column names text; rename them", "finetune"),
    case("windows-1252-task-file", "finetune.py", [*LOCAL, "task.train_file={inputs}/cp1252.csv"],
         "cp1252.csv is not UTF-8 (invalid byte at offset 14); re-save it as UTF-8", "finetune"),
    case("zero-byte-task-file", "finetune.py", [*LOCAL, "task.train_file={inputs}/empty.csv"],
         "empty.csv is empty (0 bytes); point the task at a file with examples", "finetune"),
    case("empty-label-cell", "finetune.py", [*LOCAL, "task.train_file={inputs}/empty_label.csv"],
         "empty_label.csv, line 3: empty label in column 'label'; fill it in", "finetune"),
    # -- corpus and pretraining -----------------------------------------------------------------
    case("windows-1252-corpus", "pretrain.py",
         ["corpus=text_files", "corpus.path={inputs}/corpus_cp1252.txt"],
         "re-save it as UTF-8, e.g. iconv -f cp1252 -t utf-8", "tokenizer"),
    case("zero-byte-corpus", "pretrain.py",
         ["corpus=text_files", "corpus.path={inputs}/corpus_empty.txt"],
         "has no text: every document is blank; point the corpus at text", "tokenizer"),
    case("nsp-on-one-document", "pretrain.py",
         ["corpus=text_files", "corpus.path={inputs}/corpus_one_doc.txt"],
         "documents are separated by blank lines, or one per file); use pretrain=mlm_only",
         "pretrain_data"),
    case("corpus-path-missing", "pretrain.py",
         ["corpus=text_files", "corpus.path={inputs}/no_such_corpus"],
         "no_such_corpus does not exist; point corpus.path at an existing file or directory"),
    case("batch-larger-than-dataset", "pretrain.py", ["pretrain.global_batch_size=100000"],
         "fewer than pretrain.global_batch_size=100000; lower the batch size or add text",
         "pretrain"),
    case("finetune-batch-larger-than-dataset", "finetune.py",
         [*HF_INIT, "finetune.global_batch_size=1000"],
         "finetune.global_batch_size=1000 exceeds the 48 training examples of task bbc_news; "
         "lower finetune.global_batch_size", "finetune"),
    # -- extract and visualize ------------------------------------------------------------------
    case("extract-layer-out-of-range", "extract.py", ["extract.source=pretrain",
         "extract.layers=[7]"], "use indices from -3 to 2", "extract"),
    case("perplexity-too-large-for-the-points", "visualize.py",
         [*FAST_VIZ, "extract.max_examples=12", "visualize.perplexity=30"],
         "visualize.perplexity=30 is too large for 12 points (t-SNE needs 3 x perplexity < N); "
         "use visualize.perplexity <= 3.6", "visualize"),
    # -- probe ------------------------------------------------------------------------------------
    case("probe-unknown-model", "probe.py", ["probe.models=[pretrained,trained]"],
         "probe.models='trained' is not one of pretrained, random, finetuned"),
    case("probe-too-few-examples", "probe.py", ["task.max_examples=4"],
         "it needs at least 10 of each: raise task.max_examples"),
]  # fmt: skip


def manifests(outputs: Path) -> set[Path]:
    return set((outputs / "artifacts").glob(f"*/*/{MANIFEST}"))


SCRIPT_STAGES = {  # what each pipelines/*.py runs
    "run.py": None, "tokenizer.py": ["tokenizer"], "pretrain.py": ["pretrain"],
    "finetune.py": ["finetune"], "extract.py": ["extract"], "visualize.py": ["visualize"],
    "probe.py": ["probe"],
}  # fmt: skip


def run_like_the_entry_point(script: str, args: list[str]) -> None:
    """`check_overrides()` then `@hydra.main`'s call of `run_pipeline`, in this process."""
    check_overrides(args)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=args)
    run_pipeline(cfg, only=SCRIPT_STAGES[script])


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_one_line_that_names_the_fix(bad: Case, request, tmp_path, capsys):
    if bad.stage is None:  # fails at start-up: nothing upstream is needed
        paths = {"outputs": tmp_path / "outputs", "inputs": tmp_path, "hf": tmp_path}
        write_bad_files(tmp_path)
    else:
        paths = request.getfixturevalue("shared")
    before = manifests(paths["outputs"])
    args = [*TINY, *(arg.format(**paths) for arg in bad.args)]
    if not any(arg.startswith("paths.outputs=") for arg in args):
        args.append(f"paths.outputs={paths['outputs']}")
    with pytest.raises(SystemExit) as exit_:
        run_like_the_entry_point(bad.script, args)

    assert exit_.value.code == EXIT_BAD_INPUT
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]], stderr[-3000:]  # one error line, and it comes last
    assert bad.fragment.format(**paths) in lines[-1], lines[-1]

    if bad.stage is None:
        assert not (paths["outputs"] / "artifacts").exists()
    else:
        new = manifests(paths["outputs"]) - before
        assert not [m for m in new if m.parent.parent.name == bad.stage], new
    if bad.check:
        bad.check(paths["inputs"])


@pytest.mark.parametrize(
    ("script", "args", "fragment"),
    [
        ("pretrain.py", ["pretrain.mask_rat=0.2"], "did you mean 'mask_rate'?"),
        (
            "finetune.py",
            ["task=rte", "finetune.init=hf", "finetune.hf_model={hf}"],
            "task=rte reads local GLUE files: set task.data_dir=<glue_data dir>",
        ),
    ],
)
def test_entry_points_exit_2_with_one_line(script, args, fragment, shared, tmp_path):
    """The scripts themselves: exit status 2, one line on stderr, no traceback."""
    args = [arg.format(**shared) for arg in args]
    result = run_entry_point(script, *TINY, *args, f"paths.outputs={tmp_path}", timeout=180)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert lines[-1].startswith("error: ") and fragment in lines[-1]
