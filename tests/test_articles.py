"""The articles' evaluation cell, as the README and the notebook give it, on the real images:
those under $COVIDX_DATA, or ../shared/data/cxr beside the checkout (skipped, saying why, when
neither has them; tests/test_readme.py runs the same cell on the bundled samples)."""
import contextlib
import io
import os
import re

import numpy as np
import pytest

import covidx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("COVIDX_DATA") or os.path.join(REPO, "..", "shared", "data", "cxr")
NEW_DATASET = os.path.join(DATA, "ieee8023-covid")


def articles_model():
    """The shipped model when this installation has one, else a compiled random articles model."""
    try:
        return covidx.load_model()
    except FileNotFoundError:
        from covidx.applications.resnet50 import ResNet50

        model = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512), class_names=["COV19", "Normal"],
                         preprocessing={"rescale": 1 / 255}, seed=0)
        model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
        return model


@pytest.mark.skipif(not os.path.isdir(NEW_DATASET), reason="the real X-rays are not shipped: set COVIDX_DATA to the "
                                                            "folder holding ieee8023-covid/ to run this test")
def test_new_dataset_cell_runs_verbatim(monkeypatch):
    from covidx.data import data_dir
    from covidx.keras.preprocessing.image import ImageDataGenerator

    monkeypatch.setenv("COVIDX_DATA", DATA)
    model = articles_model()
    train_datagen = ImageDataGenerator(rescale=1./255)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # --- the cell, verbatim ---
        test_generator2 = train_datagen.flow_from_directory(data_dir('ieee8023-covid'),
                                                           target_size = (224, 224),
                                                           color_mode = 'rgb',
                                                           batch_size = 3,
                                                           class_mode = 'Binary',
                                                           shuffle = True)
        Testresults2 = model.evaluate(test_generator2)
        print("test2 loss, test2 acc:", Testresults2)
        # --- end of the cell ---
    printed = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    lines = printed.splitlines()
    assert lines[0] == "Found 205 images belonging to 1 classes."
    assert printed.count("'COVID-19' -> 'COV19'") == 1
    bar = printed.replace("\b", "").split("\r")[-1]
    # the final draw is padded with spaces when it is shorter than the draw before it (as Keras does)
    assert re.search(r"69/69 ━{20} \d+s \d+m?s/step - accuracy: \S+ - loss: \S+ *\n", bar), bar
    loss, acc = Testresults2
    assert lines[-1] == "test2 loss, test2 acc: %s" % [loss, acc]
    # accuracy == the fraction of these COVID-19 images that predict() calls COVID-19
    ordered = train_datagen.flow_from_directory(NEW_DATASET, target_size=(224, 224), batch_size=16,
                                                class_mode=None, shuffle=False)
    p = model.predict(ordered, verbose=0)
    assert acc == pytest.approx(float(np.mean(np.argmax(p, axis=1) == 0)), abs=1e-6)
    covid = np.clip(p[:, 0] / p.sum(axis=1), 1e-7, 1 - 1e-7)
    assert loss == pytest.approx(float(np.mean(-np.log(covid))), rel=1e-4)
