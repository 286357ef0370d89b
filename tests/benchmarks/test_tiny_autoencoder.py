"""benchmarks.tiny_autoencoder: the drift experiment runs, and without L_dgc a frozen encoder keeps its normal
patches at the prototypes."""

from benchmarks import tiny_autoencoder


def test_rows_at_the_first_middle_and_last_step():
    rows = tiny_autoencoder.train(seed=0, steps=4, lambda_dgc=0.1, frozen=False)
    assert [step for step, _, _ in rows] == [0, 2, 3]
    assert all(-1.0 <= sim <= 1.0 and 1 <= used <= tiny_autoencoder.K for _, sim, used in rows)
    assert rows[0][1] > 0.9  # the prototypes are the k-means of the first step's normal patches


def test_the_frozen_encoder_without_the_push_stays_at_its_prototypes():
    rows = tiny_autoencoder.train(seed=0, steps=4, lambda_dgc=0.0, frozen=True)
    assert all(sim > 0.9 for _, sim, _ in rows)
