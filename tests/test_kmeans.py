"""k-means on device against a float64 numpy reference with the same initialisation."""

import jax
import numpy as np
import pytest

from detcon_jax import kmeans as kmeans_lib


def _reference(x, init, iterations, distance):
    """Float64 Lloyd iterations from given initial centre indices (the module's rules:
    ties to the lowest index, an empty cluster keeps its centre)."""
    x = np.asarray(x, np.float64)
    if distance == "cosine":
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    centres = x[init].copy()

    def dist(c):
        if distance == "cosine":
            return 1.0 - x @ c.T
        return ((x[:, None] - c[None]) ** 2).sum(-1)

    for _ in range(iterations):
        assign = np.argmin(dist(centres), axis=-1)
        for k in range(len(centres)):
            members = x[assign == k]
            if len(members):
                mean = members.mean(0)
                if distance == "cosine":
                    mean = mean / np.linalg.norm(mean)
                centres[k] = mean
    return np.argmin(dist(centres), axis=-1), centres


def _blobs(rs, batch, n, channels, clusters, spread):
    centres = rs.normal(size=(batch, clusters, channels)) * 3
    labels = rs.randint(0, clusters, size=(batch, n))
    x = np.take_along_axis(centres, labels[..., None], axis=1)
    return (x + spread * rs.normal(size=x.shape)).astype(np.float32)


@pytest.mark.parametrize("distance", kmeans_lib.DISTANCES)
def test_kmeans_matches_float64_reference_with_same_init(distance):
    rs = np.random.RandomState(0)
    x = _blobs(rs, batch=4, n=49, channels=16, clusters=5, spread=0.8)
    key = jax.random.PRNGKey(3)
    assign, centres = jax.jit(lambda k, f: kmeans_lib.kmeans(
        k, f, num_clusters=6, iterations=8, distance=distance))(key, x.reshape(4, 7, 7, 16))
    init = np.asarray(kmeans_lib.kmeans_plusplus_indices(key, x, num_clusters=6,
                                                         distance=distance))
    assert assign.shape == (4, 7, 7) and assign.dtype == np.int32
    for b in range(4):
        assert len(set(init[b])) == 6  # 49 distinct vectors: k-means++ picks distinct ones
        want_assign, want_centres = _reference(x[b], init[b], 8, distance)
        np.testing.assert_array_equal(np.asarray(assign[b]).ravel(), want_assign)
        # float32 means of <= 49 vectors of scale ~3: error ~1e-6 relative.
        np.testing.assert_allclose(np.asarray(centres[b]), want_centres, atol=1e-4)


def test_empty_cluster_keeps_its_centre_like_the_reference():
    """A repeated initial centre leaves a cluster empty at first; it keeps its centre (a
    centre reset to the mean of nothing, zero, would take the points near the origin)."""
    rs = np.random.RandomState(4)
    x = np.concatenate([rs.normal([0.3, 0.0], 0.3, size=(20, 2)),
                        rs.normal([6.0, 0.0], 0.3, size=(20, 2))]).astype(np.float32)
    init = np.array([[25, 25, 3]], np.int32)
    assign, centres = kmeans_lib.kmeans(jax.random.PRNGKey(0), x[None], num_clusters=3,
                                        iterations=4, distance="euclidean", init=init)
    want_assign, want_centres = _reference(x, init[0], 4, "euclidean")
    np.testing.assert_array_equal(np.asarray(assign[0]), want_assign)
    np.testing.assert_allclose(np.asarray(centres[0]), want_centres, atol=1e-5)


def test_kmeans_is_deterministic_per_key_and_images_are_independent():
    rs = np.random.RandomState(1)
    x = _blobs(rs, batch=3, n=30, channels=8, clusters=4, spread=1.5)
    run = lambda k, f: kmeans_lib.kmeans(k, f, num_clusters=4, iterations=3)[0]  # noqa: E731
    a = np.asarray(run(jax.random.PRNGKey(0), x))
    np.testing.assert_array_equal(a, np.asarray(run(jax.random.PRNGKey(0), x)))
    init = np.asarray(kmeans_lib.kmeans_plusplus_indices(jax.random.PRNGKey(0), x,
                                                         num_clusters=4))
    # Vectorised over the batch: each image gets its own initialisation.
    assert not all(np.array_equal(init[0], init[i]) for i in (1, 2))


@pytest.mark.parametrize("distance", kmeans_lib.DISTANCES)
def test_fewer_distinct_vectors_than_clusters(distance):
    rs = np.random.RandomState(2)
    palette = rs.normal(size=(3, 8)).astype(np.float32)
    labels = rs.randint(0, 3, size=(2, 36))
    labels[:, :3] = [0, 1, 2]  # all three present in each image
    x = palette[labels]
    key = jax.random.PRNGKey(5)
    assign, _ = kmeans_lib.kmeans(key, x, num_clusters=8, iterations=5, distance=distance)
    assign = np.asarray(assign)
    assert assign.min() >= 0 and assign.max() < 8
    for b in range(2):
        # Exactly three clusters used, one per distinct vector.
        assert len(np.unique(assign[b])) == 3
        for v in range(3):
            assert len(np.unique(assign[b][labels[b] == v])) == 1
    again, _ = kmeans_lib.kmeans(key, x, num_clusters=8, iterations=5, distance=distance)
    np.testing.assert_array_equal(assign, np.asarray(again))


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="distance"):
        kmeans_lib.kmeans(jax.random.PRNGKey(0), np.zeros((1, 4, 2)), num_clusters=2,
                          distance="l1")
    with pytest.raises(ValueError, match="features"):
        kmeans_lib.kmeans(jax.random.PRNGKey(0), np.zeros((4, 2)), num_clusters=2)
