"""Tests for bertforge.analysis.layouts: layouts, quality numbers, errors, figures."""

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from bertforge.analysis.embed import extract_sentence_embeddings, load_embeddings
from bertforge.analysis.layouts import (
    Layout,
    embed_2d,
    layout_quality,
    plot_dof_comparison,
    plot_method_panel,
    plot_scatter,
    plot_snapshots,
)
from bertforge.config import TokenizerConfig, VisualizeConfig
from bertforge.data.corpus import load_bbc_news
from bertforge.data.tokenizer import train_tokenizer
from bertforge.errors import ConfigError, DataError
from bertforge.model import BertConfig, BertModel

# Short runs: 100 exaggerated + 200 plain updates. One thread: quick on a busy machine.
FAST = VisualizeConfig(perplexity=15, n_iter=300, early_exaggeration_iter=100, snapshots=[100, 200])
N_JOBS = 1
NAMES = ["north", "east", "south", "west"]


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(240, n_features=32, centers=4, cluster_std=1.0, random_state=0)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def tsne(blobs):
    return embed_2d(blobs[0], "tsne", FAST, seed=0, n_jobs=N_JOBS)


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_tsne_layout_is_reproducible(blobs, tsne):
    again = embed_2d(blobs[0], "tsne", FAST, seed=0, n_jobs=N_JOBS)
    other = embed_2d(blobs[0], "tsne", FAST, seed=1, n_jobs=N_JOBS)
    assert tsne.xy.shape == (240, 2) and tsne.xy.dtype == np.float32
    assert np.array_equal(tsne.xy, again.xy)
    assert not np.allclose(tsne.xy, other.xy)
    assert tsne.method == "tsne" and tsne.kl_divergence > 0 and tsne.seconds > 0
    assert tsne.description == "t-SNE (perplexity 15, dof 1)"


def test_snapshots_at_requested_updates(blobs, tsne):
    assert sorted(tsne.snapshots) == [100, 200]
    assert all(xy.shape == (240, 2) for xy in tsne.snapshots.values())
    assert not np.allclose(tsne.snapshots[100], tsne.snapshots[200])
    assert not np.allclose(tsne.snapshots[200], tsne.xy)
    # A snapshot after the exaggeration phase leaves the final layout exactly as it was.
    plain = embed_2d(blobs[0], "tsne", dataclasses.replace(FAST, snapshots=[]), 0, n_jobs=N_JOBS)
    late = dataclasses.replace(FAST, snapshots=[150, 300])  # 300 = the end: not a snapshot
    with_late = embed_2d(blobs[0], "tsne", late, 0, n_jobs=N_JOBS)
    assert plain.snapshots == {} and sorted(with_late.snapshots) == [150]
    assert np.array_equal(plain.xy, with_late.xy)


def test_dof_changes_the_layout(blobs, tsne):
    gaussian_like = embed_2d(blobs[0], "tsne", dataclasses.replace(FAST, dof=100), 0, n_jobs=N_JOBS)
    assert gaussian_like.params["dof"] == 100
    assert not np.allclose(tsne.xy, gaussian_like.xy)


def test_quality_numbers_in_range_and_track_the_labels(blobs, tsne):
    X, y = blobs
    quality = layout_quality(X, tsne, y)
    for key in ("trustworthiness", "knn_preservation", "knn_accuracy_2d", "knn_accuracy_hd"):
        assert 0.0 <= quality[key] <= 1.0
    assert quality["trustworthiness"] > 0.9 and quality["knn_accuracy_2d"] > 0.95
    assert quality["knn_accuracy_hd"] == 1.0 and quality["silhouette_2d"] > 0.5
    assert quality["kl_divergence"] == tsne.kl_divergence
    assert (quality["k"], quality["n_evaluated"], quality["n_points"]) == (10, 240, 240)

    shuffled = layout_quality(X, tsne.xy, np.random.default_rng(0).permutation(y))
    assert shuffled["knn_accuracy_2d"] < 0.5 and shuffled["silhouette_2d"] < 0.1
    assert shuffled["trustworthiness"] == quality["trustworthiness"]  # label-free
    assert "kl_divergence" not in shuffled
    unlabelled = layout_quality(X, tsne, None)
    assert "knn_accuracy_2d" not in unlabelled and "silhouette_2d" not in unlabelled
    assert unlabelled["trustworthiness"] == quality["trustworthiness"]


def test_separated_clusters_score_higher_than_overlapping_ones():
    """The metric ordering behind "a model that separates topics scores higher"."""
    scores = {}
    for std in (1.0, 20.0):
        X, y = make_blobs(240, n_features=32, centers=4, cluster_std=std, random_state=0)
        layout = embed_2d(X, "tsne", FAST, seed=0, n_jobs=N_JOBS)
        scores[std] = layout_quality(X, layout, y)
    assert scores[1.0]["knn_accuracy_2d"] > scores[20.0]["knn_accuracy_2d"] + 0.3
    assert scores[1.0]["silhouette_2d"] > scores[20.0]["silhouette_2d"] + 0.3


def test_quality_on_a_fixed_subsample(blobs, tsne):
    X, y = blobs
    first = layout_quality(X, tsne, list(y), max_points=100, k=60)
    assert first == layout_quality(X, tsne, list(y), max_points=100, k=60)
    assert (first["n_evaluated"], first["n_points"]) == (100, 240)
    assert first["k"] == 49  # trustworthiness needs k < N / 2
    with pytest.raises(DataError, match="240 embeddings, 240 layout points and 3 labels"):
        layout_quality(X, tsne, y[:3])


def test_sklearn_backend(blobs):
    cfg = VisualizeConfig(tsne_backend="sklearn", perplexity=15, n_iter=300, snapshots=[])
    layout = embed_2d(blobs[0], "tsne", cfg, seed=0, n_jobs=N_JOBS)
    assert layout.xy.shape == (240, 2) and layout.kl_divergence > 0
    assert layout.params["backend"] == "sklearn" and layout.snapshots == {}
    assert layout_quality(blobs[0], layout, blobs[1])["knn_accuracy_2d"] > 0.95
    for change, match in (
        ({"dof": 10.0}, "sklearn's TSNE has no dof"),
        ({"snapshots": [250]}, "sklearn's TSNE gives no snapshots"),
        ({"early_exaggeration_iter": 100}, "exaggerates for 250 updates"),
    ):
        with pytest.raises(ConfigError, match=match):
            embed_2d(blobs[0], "tsne", dataclasses.replace(cfg, **change), seed=0)


def test_pca(blobs):
    layout = embed_2d(blobs[0], "pca", seed=0)
    again = embed_2d(blobs[0], "pca", seed=0)
    assert layout.xy.shape == (240, 2) and np.array_equal(layout.xy, again.xy)
    assert 0 < layout.params["explained_variance"] <= 1 and layout.kl_divergence is None
    assert layout_quality(blobs[0], layout, blobs[1])["knn_accuracy_2d"] > 0.9


@pytest.mark.slow  # numba compiles UMAP on first use (~15-30 s)
def test_umap(blobs):
    layout = embed_2d(blobs[0], "umap", VisualizeConfig(), seed=0)
    assert layout.xy.shape == (240, 2) and layout.params["n_neighbors"] == 15
    assert layout_quality(blobs[0], layout, blobs[1])["knn_accuracy_2d"] > 0.95
    with pytest.raises(ConfigError, match="umap_n_neighbors <= 9"):
        embed_2d(blobs[0][:10], "umap", VisualizeConfig(), seed=0)


def test_bad_input_errors(blobs):
    X = blobs[0]
    with pytest.raises(
        ConfigError, match=r"too large for 40 points .* visualize\.perplexity <= 13 "
    ):
        embed_2d(X[:40], "tsne", FAST)
    with pytest.raises(DataError, match="needs at least 3 points, got 2"):
        embed_2d(X[:2], "pca")
    with_nan = X.copy()
    with_nan[7, 3] = np.nan
    with pytest.raises(DataError, match=r"1 of 240 embeddings contain NaN/inf \(first: row 7\)"):
        embed_2d(with_nan, "pca")
    with pytest.raises(ConfigError, match=r"visualize\.method='mds' is not one of tsne, umap, pca"):
        embed_2d(X, "mds")
    with pytest.raises(ConfigError, match=r"outside 1\.\.n_iter=300"):
        embed_2d(X, "tsne", dataclasses.replace(FAST, snapshots=[400]))
    with pytest.raises(ConfigError, match="n_iter=100 counts all updates"):
        embed_2d(X, "tsne", dataclasses.replace(FAST, n_iter=100, snapshots=[]))


def test_figures_are_written(blobs, tsne, tmp_path):
    X, y = blobs
    quality = layout_quality(X, tsne, y)
    title = f"random BERT · layer -1 · cls · {tsne.description}"
    assert is_png(plot_scatter(tsne.xy, y, NAMES, title, tmp_path / "scatter.png", quality))
    assert is_png(plot_scatter(tsne.xy, None, None, "no labels", tmp_path / "plain.png"))
    assert is_png(plot_snapshots(tsne, y, NAMES, "t-SNE updates", tmp_path / "snap.png"))

    heavy = embed_2d(X, "tsne", dataclasses.replace(FAST, dof=100), 0, n_jobs=N_JOBS)
    dofs = {1.0: tsne, 100.0: heavy}
    qualities = {dof: layout_quality(X, layout, y) for dof, layout in dofs.items()}
    path = tmp_path / "figures" / "dof.png"  # parent directories are created
    assert is_png(plot_dof_comparison(dofs, qualities, y, NAMES, "heavy tails", path))

    methods = {"tsne": tsne, "pca": embed_2d(X, "pca")}
    qualities = {name: layout_quality(X, layout, None) for name, layout in methods.items()}
    assert is_png(plot_method_panel(methods, qualities, y, NAMES, "methods", tmp_path / "m.png"))

    with pytest.raises(ConfigError, match="no snapshots"):
        plot_snapshots(Layout(tsne.xy, "tsne"), y, NAMES, "none", tmp_path / "x.png")


def test_topic_model_beats_random_bert_on_bbc_test_articles(tmp_path):
    """On the 239 BBC test articles, embeddings that carry topic (TF-IDF + SVD here; the lead's
    test uses a fine-tuned BERT) give a higher 2-D k-NN accuracy than a random-init BERT."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = load_bbc_news()
    test = [d for d in docs if d.split == "test"]
    texts, labels = [d.text for d in test], [d.label for d in test]
    tokenizer = train_tokenizer([d.text for d in docs[::7]], TokenizerConfig(vocab_size=500))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64)
    bert = BertModel(config)
    extract_sentence_embeddings(bert, tokenizer, texts, out_dir=tmp_path, progress=False)
    random_bert, _ = load_embeddings(tmp_path)
    tfidf = TfidfVectorizer(sublinear_tf=True, stop_words="english").fit_transform(texts)
    topical = TruncatedSVD(50, random_state=0).fit_transform(tfidf)

    cfg = VisualizeConfig(snapshots=[])
    quality = {
        name: layout_quality(X, embed_2d(X, "tsne", cfg, 0, n_jobs=N_JOBS), labels)
        for name, X in (("random", random_bert), ("topical", topical))
    }
    assert len(test) == 239
    assert quality["topical"]["knn_accuracy_2d"] > quality["random"]["knn_accuracy_2d"] + 0.3
