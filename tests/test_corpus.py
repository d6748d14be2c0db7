import json
import os
from collections import Counter

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from bertforge.config import CorpusConfig
from bertforge.data.corpus import (
    Document,
    documents_to_texts,
    load_bbc_news,
    load_documents,
    split_for,
    split_sentences,
)
from bertforge.errors import DataError


def text_files(path, **kwargs) -> list[Document]:
    return load_documents(CorpusConfig(source="text_files", path=str(path), **kwargs))


# --- embedded BBC News ---------------------------------------------------------------------------


def test_bbc_news_has_2225_labelled_documents():
    docs = load_bbc_news()
    assert len(docs) == 2225
    assert Counter(doc.label for doc in docs) == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }
    assert docs[0].id == "business/001"
    assert docs[0].text.startswith("Ad sales boost Time Warner profit\n\nQuarterly profits")
    assert [doc.id for doc in docs] == sorted(doc.id for doc in docs)
    assert all(doc.text.strip() and doc.split == split_for(doc.id) for doc in docs)
    assert load_bbc_news() is docs  # cached per process


def test_bbc_latin1_file_is_decoded():
    (doc,) = [doc for doc in load_bbc_news() if doc.id == "sports/199"]
    assert "£15.8m" in doc.text and "\ufffd" not in doc.text


def test_embedded_source_and_max_documents():
    docs = load_documents(CorpusConfig(source="embedded", max_documents=7))
    assert [doc.id for doc in docs] == [f"business/00{n}" for n in range(1, 8)]


# --- splits --------------------------------------------------------------------------------------


def test_split_for_is_fixed():
    assert split_for("business/001") == "train"
    assert split_for("business/006") == "test"
    assert split_for("tech/001") == "validation"
    assert split_for("5") == "validation"
    assert split_for("8") == "test"


def test_split_proportions_on_bbc():
    counts = Counter(doc.split for doc in load_bbc_news())
    shares = {split: n / 2225 for split, n in counts.items()}
    assert shares["train"] == pytest.approx(0.8, abs=0.03)
    assert shares["validation"] == pytest.approx(0.1, abs=0.02)
    assert shares["test"] == pytest.approx(0.1, abs=0.02)
    assert len(documents_to_texts(load_bbc_news(), "train")) == counts["train"]


# --- text files ----------------------------------------------------------------------------------


def test_text_file_single(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("First line.\nSecond line.\n", encoding="utf-8")
    (doc,) = text_files(path)
    assert doc == Document("one.txt", "First line.\nSecond line.", "train")


def test_text_file_blank_line_blocks(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("Doc one.\r\n\r\nDoc two,\nstill two.\n \n\n\nDoc three.\n", encoding="utf-8")
    docs = text_files(path)
    assert [(doc.id, doc.text) for doc in docs] == [
        ("docs.txt#0", "Doc one."),
        ("docs.txt#1", "Doc two,\nstill two."),
        ("docs.txt#2", "Doc three."),
    ]


def test_text_file_directory_and_glob(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("Zed.", encoding="utf-8")
    (tmp_path / "a.txt").write_text("Ay.", encoding="utf-8")
    (tmp_path / "notes.md").write_text("Ignored.", encoding="utf-8")
    assert [doc.id for doc in text_files(tmp_path)] == ["a.txt", "b/z.txt"]
    assert [doc.id for doc in text_files(tmp_path / "**" / "*.txt")] == ["a.txt", "b/z.txt"]
    assert [doc.text for doc in text_files(tmp_path / "*.md")] == ["Ignored."]
    assert [doc.id for doc in text_files(tmp_path, max_documents=1)] == ["a.txt"]


def test_text_file_not_utf8(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9 au lait".encode("cp1252"))
    with pytest.raises(DataError, match=r"latin\.txt.*byte offset 3.*re-save it as UTF-8"):
        text_files(path)


def test_text_files_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"corpus\.path=.*nowhere.* does not exist"):
        text_files(tmp_path / "nowhere")
    with pytest.raises(DataError, match="matches no files"):
        text_files(tmp_path / "*.txt")
    with pytest.raises(DataError, match=r"no \*\.txt files"):
        text_files(tmp_path)


def test_text_files_blank_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("  \n\n\t\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"corpus text_files .* has no text"):
        text_files(tmp_path)


# --- Hugging Face datasets -----------------------------------------------------------------------


@pytest.fixture
def jsonl_dir(tmp_path):
    rows = [{"body": "Hello there. General Kenobi."}, {"body": "  "}, {"body": "Third."}]
    data = tmp_path / "jsonl"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def hf(**kwargs) -> list[Document]:
    return load_documents(CorpusConfig(source="hf_dataset", **kwargs))


def test_hf_dataset_from_local_directory(jsonl_dir):
    docs = hf(path=str(jsonl_dir), text_column="body")
    assert [(doc.id, doc.text) for doc in docs] == [
        ("0", "Hello there. General Kenobi."),
        ("2", "Third."),
    ]
    assert [doc.id for doc in hf(path=str(jsonl_dir / "train.jsonl"), text_column="body")] == [
        "0",
        "2",
    ]


def test_hf_dataset_missing_text_column(jsonl_dir):
    with pytest.raises(DataError, match=r"corpus\.text_column=text .* columns found: body"):
        hf(path=str(jsonl_dir))


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_dict({"text": ["One.", "", "Three."], "n": [1, 2, 3]})
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved"))
    assert [doc.id for doc in hf(name=str(tmp_path / "saved"))] == ["0", "2"]
    with pytest.raises(DataError, match=r"corpus\.split=test .* choose one of train"):
        hf(path=str(tmp_path / "saved"), split="test")
    with pytest.raises(DataError, match=r"corpus\.text_column=n holds int values"):
        hf(path=str(tmp_path / "saved"), text_column="n")


def test_hf_dataset_on_a_broken_jsonl_names_file_and_line(tmp_path):
    """Used to end in three chained tracebacks (pyarrow, datasets, ours)."""
    data = tmp_path / "broken"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "One."}\n{"text": "Two.\n{"text": "Three."}\n')
    with pytest.raises(DataError) as info:
        hf(path=str(data))
    message = str(info.value)
    assert "\n" not in message and "train.jsonl" in message, message


def test_hf_dataset_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"corpus\.path=.* does not exist"):
        hf(path=str(tmp_path / "absent"))


# --- sentences -----------------------------------------------------------------------------------


def test_split_sentences_english():
    text = (
        'Mr. Smith paid $3.5 million, i.e. a lot. Dr. J. Smith met U.S. officials. "Why?" '
        "she asked. Yes! It worked... Prices rose 2.5% etc. and fell.\n"
        "A new paragraph (with a note.) Then more.\n\nLast one"
    )
    assert split_sentences(text) == [
        "Mr. Smith paid $3.5 million, i.e. a lot.",
        "Dr. J. Smith met U.S. officials.",
        '"Why?" she asked.',
        "Yes!",
        "It worked...",
        "Prices rose 2.5% etc. and fell.",
        "A new paragraph (with a note.)",
        "Then more.",
        "Last one",
    ]


def test_split_sentences_korean_and_cjk():
    assert split_sentences("한국어 문장을 토큰화합니다. 정말 좋아요. 그렇죠? 네!") == [
        "한국어 문장을 토큰화합니다.",
        "정말 좋아요.",
        "그렇죠?",
        "네!",
    ]
    assert split_sentences("你好。我是学生！你呢？") == ["你好。", "我是学生！", "你呢？"]


def test_split_sentences_blank():
    assert split_sentences("  \n\n ") == []


def test_iter_sentences_reads_lines_as_splitlines_does():
    from bertforge.data.corpus import _paragraph_sentences, iter_sentences

    text = (
        "First one. Second one!\r\nThird\x0bfourth.\x0cFifth\x1csixth\x1dseventh\x1eeighth"
        "\x85ninth\u2028tenth\u2029eleventh\r\rtwelfth\n\n  \nMr. Smith went. He left.\n"
    )
    expected = [s for line in text.splitlines() for s in _paragraph_sentences(line) if s]
    assert list(iter_sentences(text)) == split_sentences(text) == expected
    assert len(expected) == 14
    for doc in load_bbc_news()[:50]:
        lines = doc.text.splitlines()
        assert split_sentences(doc.text) == [
            s for line in lines for s in _paragraph_sentences(line) if s
        ]


# --- splits of text files: by document, by text ----------------------------------------------


@pytest.mark.parametrize("name", ["wiki.txt", "corpus.txt"])
def test_a_one_document_corpus_trains_whatever_its_name(tmp_path, name):
    """The split was a hash of the file name: wiki.txt landed in validation, leaving no
    training document."""
    path = tmp_path / name
    path.write_text("One long article. With many sentences.\nAnd lines.\n", encoding="utf-8")
    (doc,) = text_files(path)
    assert (doc.id, doc.split) == (name, "train")


def test_blocks_are_split_by_their_text(tmp_path):
    blocks = [f"Paragraph {n} talks about topic {n * 7 % 13}." for n in range(60)]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "wiki.txt").write_text("\n\n".join(blocks), encoding="utf-8")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "renamed.txt").write_text("\n\n".join(blocks[::-1]), encoding="utf-8")
    docs = text_files(tmp_path / "a" / "wiki.txt")
    assert [(doc.id, doc.text) for doc in docs[:2]] == [
        ("wiki.txt#0", blocks[0]),
        ("wiki.txt#1", blocks[1]),
    ]
    assert [doc.split for doc in docs] == [split_for(block) for block in blocks]
    assert {"train", "validation", "test"} == {doc.split for doc in docs}
    moved = {doc.text: doc.split for doc in text_files(tmp_path / "b" / "renamed.txt")}
    assert moved == {doc.text: doc.split for doc in docs}


def test_no_document_in_training_split_trains_on_all(tmp_path, caplog):
    held_out = [t for t in (f"Note number {n}." for n in range(100)) if split_for(t) != "train"]
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(held_out[:3]), encoding="utf-8")
    docs = text_files(path)
    assert [(doc.text, doc.split) for doc in docs] == [(t, "train") for t in held_out[:3]]
    assert "documents are separated by blank lines, or one per file" in caplog.text


def test_blank_text_files_error_says_how_documents_are_separated(tmp_path):
    (tmp_path / "a.txt").write_text(" \n\n \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"at text \(documents are separated by blank lines, or"):
        text_files(tmp_path)


def test_embedded_split_is_unchanged():
    docs = load_bbc_news()
    assert all(doc.split == split_for(doc.id) for doc in docs)
    assert Counter(doc.split for doc in docs) == {"train": 1753, "validation": 233, "test": 239}


def test_hf_dataset_reads_a_tsv_file_literally_and_caches_nothing(tmp_path, monkeypatch):
    """corpus=hf_dataset rejected .tsv while task=local_files accepted it; local files used to
    leave an Arrow cache in the user's HF cache."""
    import tempfile

    import datasets

    hf_cache, temp = tmp_path / "hf_cache", tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hf_cache)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    path = tmp_path / "reviews.tsv"
    path.write_text('id\tdocument\tlabel\n1\t"Quoted, at the start. Fine.\t1\n2\tNA\t0\n3\t\t1\n')
    docs = hf(path=str(path), text_column="document")
    assert [(doc.id, doc.text) for doc in docs] == [
        ("0", '"Quoted, at the start. Fine.'),
        ("1", "NA"),
    ]
    assert list(temp.iterdir()) == [] and not hf_cache.exists()
