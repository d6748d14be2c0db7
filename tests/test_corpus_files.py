"""Corpora given line by line (corpus.format=lines, a TSV/CSV column via corpus.text_column),
documents headed by a marker line (corpus.document_marker), and text files added to any
source (corpus.extra_paths): conf/corpus/bbc_sotu.yaml and nsmc.yaml."""

from __future__ import annotations

from collections import Counter

import pytest

from bertforge.config import CorpusConfig
from bertforge.data.corpus import load_bbc_news, load_documents, split_for, split_texts
from bertforge.errors import ConfigError, DataError
from bertforge.pipeline.graph import Pipeline
from conftest import TINY, compose, requires_shared_data

REVIEWS = ["정말 재밌어요 최고", "지루하고 별로였다", "배우 연기가 좋았다", "시간 낭비였다 진짜"]


def lines(path, **kwargs):
    return load_documents(
        CorpusConfig(source="text_files", path=str(path), format="lines", **kwargs)
    )


def write_nsmc(path, n: int = 200):
    rows = [f"{i}\t{REVIEWS[i % 4]} {i}\t{i % 2}" for i in range(n)]
    path.write_text("id\tdocument\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


# --- corpus.format=lines ---------------------------------------------------------------------


def test_a_text_file_gives_one_document_a_line(tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_text("첫 번째 리뷰.\n\n  두 번째 리뷰  \r\n세 번째.\n", encoding="utf-8")
    docs = lines(path)
    assert [(d.id, d.text) for d in docs] == [
        ("reviews.txt:1", "첫 번째 리뷰."),
        ("reviews.txt:3", "두 번째 리뷰"),
        ("reviews.txt:4", "세 번째."),
    ]
    assert [d.split for d in docs] == [split_for(d.text) for d in docs]  # by text


def test_a_tsv_column_gives_one_document_a_row(tmp_path):
    docs = lines(write_nsmc(tmp_path / "ratings.tsv"), text_column="document")
    assert len(docs) == 200 and docs[0].text == "정말 재밌어요 최고 0"
    assert docs[0].id == "ratings.tsv:2"  # line 1 is the header
    assert set(Counter(d.split for d in docs)) == {"train", "validation", "test"}
    train, held_out = split_texts(docs)  # held-out text per document, as for any corpus
    assert len(train) + len(held_out) == 200 and not set(train) & set(held_out)


def test_tsv_cells_are_literal_and_csv_cells_quoted(tmp_path):
    tsv = tmp_path / "a.tsv"
    tsv.write_text('id\tdocument\n1\t"따옴표" 그대로\n2\t\n', encoding="utf-8")
    assert [d.text for d in lines(tsv, text_column="document")] == ['"따옴표" 그대로']
    csv_file = tmp_path / "b.csv"
    csv_file.write_text('text,label\n"쉼표, 포함",1\n"여러\n줄",0\n', encoding="utf-8")
    assert [d.text for d in lines(csv_file)] == ["쉼표, 포함", "여러\n줄"]


def test_a_directory_of_lines_reads_txt_tsv_and_csv(tmp_path):
    (tmp_path / "a.txt").write_text("하나\n둘\n", encoding="utf-8")
    (tmp_path / "b.csv").write_text("text\n셋\n", encoding="utf-8")
    (tmp_path / "c.md").write_text("ignored\n", encoding="utf-8")
    assert [d.text for d in lines(tmp_path)] == ["하나", "둘", "셋"]


def test_a_missing_text_column_names_the_key_and_the_header(tmp_path):
    path = write_nsmc(tmp_path / "ratings.tsv")
    with pytest.raises(
        DataError,
        match=r"^corpus.text_column=text is not a column of .*ratings.tsv \(its header row: "
        r"id, document, label\); set corpus.text_column",
    ):
        lines(path)


def test_a_short_row_names_its_line(tmp_path):
    path = tmp_path / "ratings.tsv"
    path.write_text("id\tdocument\tlabel\n1\t좋다\t1\n2\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ratings.tsv, line 3: 1 fields, no 'document'"):
        lines(path, text_column="document")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(format="paragraphs"), r"corpus.format='paragraphs' is not one of documents, lines"),
        (dict(document_marker="(unclosed"), r"corpus.document_marker='\(unclosed' is not a"),
        (dict(format="lines", document_marker="^#"), r"document_marker is for .*=documents"),
    ],
)
def test_bad_corpus_keys_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CorpusConfig(**kwargs)


# --- corpus.document_marker and corpus.extra_paths -------------------------------------------


def write_speeches(path):
    speeches = [
        "### 1790_george_washington\nFellow-Citizens of the Senate. We meet again.",
        "### 1791_george_washington\nFellow-Citizens. A second speech.\n\nWith a paragraph.",
    ]
    path.write_text("\n\n".join(speeches) + "\n", encoding="utf-8")
    return path


def test_marker_lines_start_documents_and_are_dropped(tmp_path):
    path = write_speeches(tmp_path / "sotu.txt")
    cfg = CorpusConfig(source="text_files", path=str(path), document_marker="^### ")
    docs = load_documents(cfg)
    assert [d.text for d in docs] == [
        "Fellow-Citizens of the Senate. We meet again.",
        "Fellow-Citizens. A second speech.\n\nWith a paragraph.",
    ]
    assert [d.id for d in docs] == ["sotu.txt#0", "sotu.txt#1"]
    unmarked = load_documents(CorpusConfig(source="text_files", path=str(path)))
    assert len(unmarked) == 3 and unmarked[0].text.startswith("### 1790")  # blank-line blocks


def test_extra_paths_add_text_files_to_the_embedded_corpus(tmp_path):
    speeches = write_speeches(tmp_path / "sotu.txt")
    reviews = write_nsmc(tmp_path / "ratings.tsv", 8)
    cfg = CorpusConfig(extra_paths=[str(speeches)], document_marker="^### ")
    docs = load_documents(cfg)
    assert docs[: len(load_bbc_news())] == load_bbc_news()
    assert [d.id for d in docs[len(load_bbc_news()) :]] == ["sotu.txt#0", "sotu.txt#1"]
    mixed = load_documents(
        CorpusConfig(
            source="text_files",
            path=str(tmp_path / "*.txt"),
            extra_paths=[str(reviews)],
            format="lines",
            text_column="document",
        )
    )
    assert len(mixed) == 5 + 8  # the speeches file line by line (headers too), then the reviews
    with pytest.raises(DataError, match=r"^corpus.extra_paths\[1\]=.*nowhere does not exist"):
        load_documents(CorpusConfig(extra_paths=[str(speeches), str(tmp_path / "nowhere")]))


def test_a_korean_lines_corpus_trains_a_tokenizer(tmp_path):
    path = write_nsmc(tmp_path / "ratings.tsv")
    cfg = compose(
        *TINY, "corpus=nsmc", f"corpus.path={path}", "tokenizer.vocab_size=120",
        "tokenizer.min_frequency=1", outputs=tmp_path / "outputs",
    )  # fmt: skip
    artifact = Pipeline(cfg).artifact("tokenizer")
    vocab = (artifact.path / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert {"정말", "재밌어요"} <= set(vocab)  # Hangul syllables whole


# --- The shipped corpora ---------------------------------------------------------------------


def test_bbc_sotu_adds_233_speeches_without_their_headers():
    requires_shared_data("corpus", "sotu_1790_2021.txt")
    docs = load_documents(compose("corpus=bbc_sotu").corpus)
    speeches = docs[len(load_bbc_news()) :]
    assert len(speeches) == 233 and not any("###" in d.text for d in speeches)
    assert speeches[0].text.startswith("Fellow-Citizens of the Senate and House")
    assert {d.split for d in speeches} == {"train", "validation", "test"}


def test_nsmc_corpus_is_one_document_a_review():
    requires_shared_data("korean", "nsmc_like_train.tsv")
    docs = load_documents(compose("corpus=nsmc").corpus)
    assert len(docs) == 150_000
    assert docs[0].text.startswith("아침 드라마 참 막장이넹요")
    assert Counter(d.split for d in docs)["train"] == 120_061
