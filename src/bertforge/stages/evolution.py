"""Stage `evolution`: the same texts at each pretraining snapshot (`pretrain.snapshot_steps`,
then the final model), so that what pretraining learns shows as it is learnt:

- `evolution.png`: one aligned t-SNE map (fitted on the last snapshot, the earlier ones placed
  into it), one panel per snapshot, shared axes, coloured by label; `maps/step_<N>.png` the
  same panels one by one (the W&B image series `evolution/map`, indexed by step);
- `knn.png`: cross-validated k-NN label accuracy of the embeddings per snapshot;
- `senses.png` (with `evolution.senses_file`): silhouette of each homonym's occurrences by
  sense per snapshot;
- `evolution.csv` / `evolution.json`: those numbers per snapshot (and the map coordinates);
- `sentences/step_<N>/`, `words/step_<N>/`, `senses/step_<N>/`: the embeddings themselves.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertforge.analysis.embed import (
    encoder_tokenizer,
    extract_sentence_embeddings,
    extract_word_embeddings,
    load_embeddings,
    normalized_words,
)
from bertforge.analysis.evolution import (
    aligned_maps,
    knn_accuracy,
    plot_aligned_maps,
    plot_curves,
    plot_map,
    read_senses,
    sense_silhouette,
)
from bertforge.analysis.layouts import layout_quality
from bertforge.artifacts import Encoder, snapshot_encoder, snapshot_steps
from bertforge.config import EvolutionConfig, TaskConfig, VisualizeConfig
from bertforge.data.tasks import get_task_spec, load_task, split_of
from bertforge.errors import ConfigError, DataError
from bertforge.files import write_atomic, write_json_atomic
from bertforge.pipeline.stage import BuildContext, Stage

log = logging.getLogger(__name__)


@dataclass
class Settings:
    evolution: EvolutionConfig
    task: TaskConfig
    seed: int


def check(s: Settings) -> None:
    if get_task_spec(s.task.name, s.task.task_type).task_type != "classification":
        raise ConfigError(
            f"evolution colours and scores texts by class, and task {s.task.name} is a "
            "regression task; choose a classification task (e.g. task=bbc_news)"
        )
    if s.evolution.senses_file:
        read_senses(s.evolution.senses_file)


def texts_of(s: Settings) -> tuple[list[str], list[str]]:
    """The texts of `evolution.split` (evenly capped at `evolution.max_examples`), labels."""
    e = s.evolution
    task = load_task(s.task)
    examples = split_of(task, e.split, "evolution.split", e.max_examples)
    if len(examples) < 4:
        raise DataError(
            f"evolution.split={e.split} of task {task.name} has {len(examples)} texts; "
            "the map and k-NN need at least 4: choose a larger split"
        )
    texts = [x.text_a if not x.text_b else f"{x.text_a} {x.text_b}" for x in examples]
    return texts, [task.label_names[x.label] for x in examples]


def words_in(encoder: Encoder, texts: list[str], words: list[str], length: int) -> list[str]:
    """The normalized forms of `words` that occur in the first `length` tokens of `texts`."""
    tok = encoder_tokenizer(encoder.tokenizer, length)
    seen: set[str] = set()
    for text, enc in zip(texts, tok.encode_batch(texts), strict=True):
        pieces = normalized_words(tok, text)
        seen.update(pieces[i] for i in set(enc.word_ids) if i is not None)
    forms = [normalized_words(tok, word) for word in words]
    return list(dict.fromkeys(f[0] for f in forms if len(f) == 1 and f[0] in seen))


class Snapshots:
    """Embeds the texts, the words and the sense sentences at each snapshot."""

    def __init__(self, ctx: BuildContext, texts: list[str], labels: list[str]) -> None:
        self.ctx, self.e = ctx, ctx.settings.evolution
        self.texts, self.labels = texts, labels
        self.embeddings: dict[int, np.ndarray] = {}
        self.rows: dict[int, dict[str, float | None]] = {}
        self.senses = read_senses(self.e.senses_file) if self.e.senses_file else None

    def common(self, encoder: Encoder) -> dict:
        length = min(encoder.trained_length or 128, encoder.bert.config.max_position_embeddings)
        return {
            "layers": [self.e.layer],
            "batch_size": self.e.batch_size,
            "max_seq_length": length,
            "progress": False,
        }

    def embed(self, step: int) -> None:
        encoder = snapshot_encoder(self.ctx.upstream["pretrain"], step)
        common, out = self.common(encoder), self.ctx.path
        extract_sentence_embeddings(
            encoder.bert,
            encoder.tokenizer,
            self.texts,
            out_dir=out / "sentences" / f"step_{step}",
            pooling=self.e.pooling,
            **common,
        )
        X, _ = load_embeddings(out / "sentences" / f"step_{step}", self.e.layer)
        self.embeddings[step] = np.array(X)
        row: dict[str, float | None] = {}
        words = words_in(encoder, self.texts, self.e.words, common["max_seq_length"])
        if words:
            found = extract_word_embeddings(
                encoder.bert,
                encoder.tokenizer,
                self.texts,
                words,
                out_dir=out / "words" / f"step_{step}",
                **common,
            )
            row |= {f"occurrences_{w}": float(n) for w, n in found["counts"].items()}
        if self.senses is not None:
            row |= self.sense_scores(encoder, step, common)
        self.rows[step] = row

    def sense_scores(self, encoder: Encoder, step: int, common: dict) -> dict[str, float | None]:
        """Silhouette by sense of each word's occurrences in the sense file, and their mean."""
        tok, e = encoder.tokenizer, self.e

        def form(word: str) -> str | None:  # the word as the tokenizer normalizes it
            pieces = normalized_words(tok, word)
            return pieces[0] if len(pieces) == 1 else None

        targets = {form(word) for word in e.words} - {None}
        rows = [(form(r["word"]), r) for r in self.senses if form(r["word"]) in targets]
        if not rows:
            raise DataError(
                f"evolution.senses_file={e.senses_file} has no rows for evolution.words="
                f"{list(e.words)}; add rows for them or list its words in evolution.words"
            )
        for word, r in rows:
            if word not in normalized_words(tok, r["sentence"]):
                raise DataError(
                    f"evolution.senses_file={e.senses_file}: the sentence {r['sentence']!r} "
                    f"does not contain its word {r['word']!r}; fix that row"
                )
        sense_of = {(word, r["sentence"]): r["sense"] for word, r in rows}
        sentences = list(dict.fromkeys(r["sentence"] for _, r in rows))
        words = words_in(encoder, sentences, sorted(targets), common["max_seq_length"])
        directory = self.ctx.path / "senses" / f"step_{step}"
        extract_word_embeddings(encoder.bert, tok, sentences, words, out_dir=directory, **common)
        X, occurrences = load_embeddings(directory, e.layer)
        scores: dict[str, float | None] = {}
        for word in words:
            keep = [
                i
                for i, o in enumerate(occurrences)
                if (word, o["text"]) in sense_of and o["word"] == word
            ]
            senses = [sense_of[(word, occurrences[i]["text"])] for i in keep]
            scores[f"silhouette_{word}"] = sense_silhouette(np.asarray(X)[keep], senses)
        values = [v for v in scores.values() if v is not None]
        scores["sense_silhouette"] = float(np.mean(values)) if values else None
        return scores


def write_tables(path: Path, steps: list[int], rows: dict[int, dict]) -> list[str]:
    """evolution.csv: one row per snapshot; returns its columns."""
    columns = ["step", *dict.fromkeys(key for step in steps for key in rows[step])]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for step in steps:
        writer.writerow(
            {"step": step, **{k: "" if v is None else v for k, v in rows[step].items()}}
        )
    write_atomic(path / "evolution.csv", buffer.getvalue())
    return columns


def build(ctx: BuildContext) -> dict[str, float]:
    s: Settings = ctx.settings
    e = s.evolution
    pretrain = ctx.upstream["pretrain"]
    steps = snapshot_steps(pretrain)
    if len(steps) == 1:
        log.info(
            "pretrain.snapshot_steps is empty: one snapshot, the final model (step %d); "
            "set e.g. pretrain.snapshot_steps=[50,150,300] to see training",
            steps[0],
        )
    if not e.senses_file:
        log.info(
            "evolution.senses_file is not set: no sense silhouette (e.g. "
            "evolution.senses_file=conf/evolution/senses.csv)"
        )
    texts, labels = texts_of(s)
    snapshots = Snapshots(ctx, texts, labels)
    for step in steps:
        log.info("evolution: embedding %d texts at step %d", len(texts), step)
        snapshots.embed(step)

    tsne = VisualizeConfig(perplexity=e.perplexity, n_iter=e.n_iter, snapshots=[], n_jobs=e.n_jobs)
    embeddings = [snapshots.embeddings[step] for step in steps]
    maps, final = aligned_maps(embeddings, tsne, s.seed, align=e.align, n_jobs=e.n_jobs)
    rows, k_used = snapshots.rows, e.knn_k
    for step, X, xy in zip(steps, embeddings, maps, strict=True):
        accuracy, k_used = knn_accuracy(X, labels, e.knn_k, s.seed)
        # how faithful the placed panel is to this snapshot's own space (layouts' numbers)
        quality = layout_quality(X, xy, labels, k=e.knn_k, seed=s.seed)
        faithful = {key: quality[key] for key in ("trustworthiness", "knn_accuracy_2d")}
        rows[step] = {"knn_accuracy": accuracy, **faithful, **rows[step]}
    figures, frames = draw(ctx, steps, maps, labels, rows, k_used)

    columns = write_tables(ctx.path, steps, rows)
    write_json_atomic(
        ctx.path / "evolution.json",
        {
            "steps": steps,
            "rows": [{"step": t, **rows[t]} for t in steps],
            "knn_k": k_used,
            "labels": labels,
            "maps": {str(t): xy.tolist() for t, xy in zip(steps, maps, strict=True)},
        },
    )
    metrics = {"snapshots": len(steps), "texts": len(texts), "knn_k": k_used,
               "kl_divergence": final.kl_divergence}  # fmt: skip
    for key in ("knn_accuracy", "sense_silhouette"):
        first, last = rows[steps[0]].get(key), rows[steps[-1]].get(key)
        if first is not None and last is not None:
            metrics |= {f"{key}_first": first, f"{key}_last": last}
    with ctx.loggers() as loggers:
        for step in steps:  # W&B's step is the pretraining step: the image panel slides over it
            values = {f"evolution/{k}": v for k, v in rows[step].items() if v is not None}
            loggers.log_step(step, values, {"evolution/map": frames[step]})
        for key, path in figures.items():
            loggers.log_image(f"evolution/{key}_figure", path)
        table = [[t, *(rows[t].get(c) for c in columns[1:])] for t in steps]
        loggers.log_table("evolution/table", columns, table)
        loggers.log_metrics({f"evolution/{k}": v for k, v in metrics.items()})
    ctx.extra["figures"] = {key: str(path) for key, path in figures.items()}
    return metrics


def draw(ctx: BuildContext, steps: list[int], maps: list, labels: list[str], rows: dict,
         k: int) -> tuple[dict[str, Path], dict[int, Path]]:  # fmt: skip
    """The figures (evolution, knn, senses) and the per-snapshot map frames."""
    e = ctx.settings.evolution
    name = ctx.upstream["pretrain"].manifest.get("model", {}).get("name", "pretrained model")
    layer = "last layer" if e.layer == -1 else f"layer {e.layer}"
    where = f"{e.split} split, {layer}, {e.pooling} pooling"
    titles = [
        f"step {t}\nk-NN acc. {row['knn_accuracy']:.3f} · trust. {row['trustworthiness']:.3f}"
        for t, row in ((t, rows[t]) for t in steps)
    ]
    title = f"{name} over pretraining · {where} · t-SNE of step {steps[-1]}, others placed in it"
    path = ctx.path / "evolution.png"
    figures = {"evolution": plot_aligned_maps(maps, titles, labels, title, path)}
    frames = {
        step: plot_map(xy, labels, maps, f"{name} · step {step} · {where}",
                       ctx.path / "maps" / f"step_{step}.png")
        for step, xy in zip(steps, maps, strict=True)
    }  # fmt: skip
    accuracy = [rows[t]["knn_accuracy"] for t in steps]
    figures["knn"] = plot_curves(steps, {f"k-NN (k={k})": accuracy}, "label accuracy (cross-"
                                 "validated)", f"{name} · k-NN label accuracy · {where}",
                                 ctx.path / "knn.png", ylim=(0, 1))  # fmt: skip
    sense_keys = [key for key in rows[steps[-1]] if key.startswith("silhouette_")]
    if sense_keys:
        curves = {key[11:]: [rows[t].get(key) for t in steps] for key in sense_keys}  # word
        curves["mean"] = [rows[t].get("sense_silhouette") for t in steps]
        figures["senses"] = plot_curves(
            steps, curves, "silhouette by sense (cosine)",
            f"{name} · homonyms: occurrences by sense · {Path(e.senses_file).name}",
            ctx.path / "senses.png", ylim=(-1, 1),
        )  # fmt: skip
    return figures, frames


STAGE = Stage(
    "evolution",
    Settings,
    build,
    upstream=lambda s: ("pretrain",),
    check=check,
    summary=(
        "snapshots",
        "knn_accuracy_first",
        "knn_accuracy_last",
        "sense_silhouette_first",
        "sense_silhouette_last",
    ),
)
