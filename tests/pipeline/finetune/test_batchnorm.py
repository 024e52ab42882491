"""Fine-tuning a keras backbone with real BatchNormalization layers (``--no-fold-batchnorm``; by default they
are folded into the convolutions, as extract does) leaves every one in inference mode: moving statistics (and
gamma/beta) bitwise unchanged after training, while the convolutions around them did train."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tools.demo import write_digits


def _bn_model(path: str) -> dict:
    """A small CNN with three BatchNorm layers, their statistics made non-trivial; saved as a .keras file."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inputs)
    for i, (filters, stride) in enumerate(((8, 2), (16, 2), (16, 1)), start=1):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(0)
    for i in (1, 2, 3):
        bn = model.get_layer(f"bn{i}")
        c = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.2, c), rng.uniform(0.5, 2, c)])
    model.save(path)
    return {f"bn{i}": [w.copy() for w in model.get_layer(f"bn{i}").get_weights()] for i in (1, 2, 3)}


@pytest.mark.slow
def test_every_batchnorm_layer_stays_in_inference_mode_while_the_top_trains(tmp_path):
    import keras

    from pipeline.finetune.model import batchnorm_layers
    from pipeline.finetune.options import FinetuneConfig
    from pipeline.finetune.run import TOP_FILE, run_finetune

    model_file = str(tmp_path / "cnn.keras")
    before = _bn_model(model_file)
    write_digits(str(tmp_path / "digits"), lambda i: i < 300)
    config = FinetuneConfig(inputs=(str(tmp_path / "digits"),), output=str(tmp_path / "model"), backbone=model_file,
                            fold_batchnorm=False, unfreeze=1, epochs=3, patience=3, learning_rate=3e-4,
                            batch_size=32).validate()
    report = run_finetune(config, log=lambda m: None)

    ft = report["finetune"]
    assert (ft["cut"], ft["unfrozen_blocks"]) == ("relu1", ["relu3"])
    assert ft["batchnorm"].startswith("2 BatchNormalization layers in the top: non-trainable")
    # It trained: 3 epochs of steps whose training losses differ (a model left as it was scores the same every
    # epoch, whatever the order of its batches). Early stopping restores only the trainable weights of its best
    # epoch; moving statistics are not among them, so a moved one would have stayed moved.
    assert ft["epochs_run"] == 3
    losses = ft["history"]["loss"][1:]
    assert len(losses) == 3 and max(losses) - min(losses) > 1e-3, losses

    top = keras.saving.load_model(str(tmp_path / "model" / TOP_FILE), safe_mode=True)
    assert sorted(layer.name for layer in batchnorm_layers(top)) == ["bn2", "bn3"]
    for bn in batchnorm_layers(top):
        assert not bn.trainable
        gamma, beta, mean, var = bn.get_weights()
        for after, original in zip((gamma, beta, mean, var), before[bn.name], strict=True):
            assert after.tobytes() == original.tobytes()  # bitwise: not one statistic moved
    original = keras.saving.load_model(model_file, safe_mode=True)
    moved = [np.abs(top.get_layer(n).get_weights()[0] - original.get_layer(n).get_weights()[0]).max()
             for n in ("conv2", "conv3")]
    assert (min(moved) > 1e-4) == (ft["best_epoch"] > 0)  # the convolutions kept their training, if it helped


@pytest.mark.slow
def test_by_default_a_keras_backbones_batchnorm_is_folded_before_fine_tuning(tmp_path):
    import keras

    from pipeline.finetune.model import batchnorm_layers
    from pipeline.finetune.options import FinetuneConfig
    from pipeline.finetune.run import TOP_FILE, run_finetune

    model_file = str(tmp_path / "cnn.keras")
    _bn_model(model_file)
    write_digits(str(tmp_path / "digits"), lambda i: i < 200)
    config = FinetuneConfig(inputs=(str(tmp_path / "digits"),), output=str(tmp_path / "model"), backbone=model_file,
                            unfreeze=1, epochs=1, batch_size=32).validate()
    report = run_finetune(config, log=lambda m: None)
    assert report["finetune"]["batchnorm"] == "none in the top (folded into the convolutions)"
    top = keras.saving.load_model(str(tmp_path / "model" / TOP_FILE), safe_mode=True)
    assert batchnorm_layers(top) == []  # no layer left that could run in training mode
