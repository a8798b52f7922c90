"""``ember demo``: train a CNN on real handwritten digits, save it, reload it, check it."""

from __future__ import annotations

import math
import os
import time

import numpy as np

TARGET_ACCURACY = 0.97


def build_model():
    """A small CNN for 8x8 digit images, in Keras style (channels-first)."""
    from . import layers
    from .training import Sequential

    return Sequential([
        layers.Input(shape=(1, 8, 8)),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.Flatten(),
        layers.Dropout(0.3),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.2),
        layers.Dense(10, activation="softmax"),
    ], name="digits_cnn")


def cosine_decay(epochs, base_lr=1e-3):
    """Learning rate for each epoch: half a cosine from base_lr down to 0."""
    return lambda epoch, lr: base_lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def run(epochs=25, out="ember-demo/digits_cnn.ember", seed=0, verbose=1) -> int:
    import ember as em
    from ember.data.datasets import digits

    t0 = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = digits(test_size=0.2, seed=seed)
    print(f"ember {em.__version__} demo: {len(x_train)} training and {len(x_test)} test images of "
          f"handwritten digits (8x8, scikit-learn's bundled copy)\n")
    em.manual_seed(seed)
    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    print()
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, validation_split=0.1, verbose=verbose,
              callbacks=[em.callbacks.LearningRateScheduler(cosine_decay(epochs))])
    result = model.evaluate(x_test, y_test)
    print(f"\ntest accuracy: {result['accuracy']:.4f} (loss {result['loss']:.4f}) on {len(x_test)} "
          f"held-out images")

    path = os.path.abspath(out)
    model.save(path)
    reloaded = em.load(path)
    same = np.array_equal(reloaded.predict(x_test), model.predict(x_test))
    print(f"saved the model to {path} ({os.path.getsize(path) / 1024:.1f} KiB); reloaded predictions "
          f"{'match exactly' if same else 'DIFFER'}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    if not same:
        return 1
    if result["accuracy"] < TARGET_ACCURACY:
        print(f"test accuracy is below the demo's target of {TARGET_ACCURACY:.2f}")
        return 1
    return 0
