"""The covidx command on bad command lines and bad files: usage errors exit 2 with a one-line
message and no traceback; unreadable files exit 1 with every other file scored. The command runs
in a child process (python -m covidx), as a user runs it."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from covidx.applications.resnet50 import ResNet50
from covidx.data import sample_files


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    ResNet50(weights=None, classes=2, head=(4,), class_names=["COV19", "Normal"], seed=3,
             preprocessing={"rescale": 1 / 255}).save(path, dtype="float16")
    return str(path)


def covidx_cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "covidx"] + list(args), capture_output=True, text=True,
                          cwd=cwd, timeout=120, env=env)


def assert_usage_error(run, *words):
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert run.stdout == ""


@pytest.mark.parametrize("args,words", [
    (["predict", "x.png", "--batch-size", "-1"], ["--batch-size", "positive integer", "'-1'"]),
    (["predict", "x.png", "--batch-size", "0"], ["--batch-size", "positive integer"]),
    (["evaluate", "--batch-size", "lots"], ["--batch-size", "'lots'"]),
    (["--threads", "65", "info"], ["--threads", "1 to 64"]),
    (["--threads", "-2", "info"], ["--threads"]),
    (["--threads", "0", "info"], ["--threads"]),
    (["predict"], ["paths"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_usage_errors_exit_2_with_one_line(args, words, tmp_path):
    assert_usage_error(covidx_cli(*args, cwd=tmp_path), *words)


def test_gradcam_folder_that_cannot_be_made(model_file, tmp_path):
    image = tmp_path / "a.png"
    Image.open(sample_files()[0][0]).save(image)
    run = covidx_cli("predict", str(image), "--model", model_file, "--gradcam", "/dev/null/x", cwd=tmp_path)
    assert_usage_error(run, "--gradcam", "/dev/null/x")


def test_unreadable_files_exit_1_and_the_others_are_scored(model_file, tmp_path):
    good = tmp_path / "good.png"
    Image.open(sample_files()[0][0]).save(good)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink(str(tmp_path / "gone.png"), tmp_path / "dangling.png")
    files = [str(tmp_path / n) for n in ("good.png", "broken.png", "fifo.png", "dangling.png")]
    run = covidx_cli("predict", *files, "--json", "--model", model_file, cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    records = {os.path.basename(r["path"]): r for r in json.loads(run.stdout)}
    assert sorted(records) == ["broken.png", "dangling.png", "fifo.png", "good.png"]
    assert sum(records["good.png"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert "named pipe" in records["fifo.png"]["error"]
    assert "no such image file" in records["dangling.png"]["error"]
    assert "probabilities" not in records["broken.png"]


def test_evaluate_on_a_folder_where_nothing_can_be_read(model_file, tmp_path):
    for cls in ("COVID-19", "Normal"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "broken.png").write_bytes(b"")
    run = covidx_cli("evaluate", str(tmp_path), "--model", model_file, cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "none of the 2 images" in run.stdout and run.stdout.count("broken.png") == 2


def test_bad_thread_variable_does_not_stop_import(tmp_path):
    env = dict(os.environ, COVIDX_NUM_THREADS="abc")
    run = subprocess.run([sys.executable, "-c", "import covidx, os; print(covidx.get_num_threads())"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "COVIDX_NUM_THREADS" in run.stderr and "'abc'" in run.stderr
    assert int(run.stdout) == min(64, len(os.sched_getaffinity(0)))
    env["COVIDX_NUM_THREADS"] = "1"
    run = subprocess.run([sys.executable, "-c", "import covidx; print(covidx.get_num_threads())"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert run.stdout.strip() == "1" and run.stderr == ""


# --- input scaling, class names, version and help ----------------------------------------------------


@pytest.fixture(scope="module")
def unscaled_file(tmp_path_factory):
    """A model file that records neither its input scaling nor its class names, as a Keras file."""
    path = tmp_path_factory.mktemp("model") / "bare.safetensors"
    ResNet50(weights=None, classes=2, head=(4,), seed=4, preprocessing=None).save(path)
    return str(path)


def sample_folder(root, labels=("COVID-19", "Normal")):
    for path, label in sample_files():
        if label in labels:
            os.makedirs(root / label, exist_ok=True)
            shutil.copy(path, root / label)
    return str(root)


def test_a_model_without_its_input_scaling_is_refused_until_told(unscaled_file, tmp_path):
    """Feeding 0..255 pixels to a model trained on 0..1 gives confident nonsense: where the file
    does not record the scaling, the command asks for it, then says and records the one in use."""
    import numpy as np

    import covidx
    from covidx.preprocessing.image import img_to_array, load_img

    files = [p for p, _ in sample_files()[:3]]
    assert_usage_error(covidx_cli("predict", *files, "--json", "--model", unscaled_file, cwd=tmp_path),
                       unscaled_file, "does not record the input scaling", "--rescale 1/255")
    run = covidx_cli("evaluate", sample_folder(tmp_path / "data"), "--model", unscaled_file, cwd=tmp_path)
    assert run.returncode == 2 and "--rescale" in run.stderr and "accuracy" not in run.stdout
    run = covidx_cli("predict", *files, "--json", "--model", unscaled_file, "--rescale", "1/255", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "input scaling: rescale=1/255 (--rescale)" in run.stderr  # the header; stdout holds only JSON
    records = json.loads(run.stdout)
    model = covidx.load_model(unscaled_file)
    x = np.stack([img_to_array(load_img(f, target_size=(224, 224))) for f in files]) / np.float32(255)
    want = model.predict(x, verbose=0)
    got = np.array([[r["probabilities"][n] for n in ("0", "1")] for r in records])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert {r["preprocessing"] for r in records} == {"rescale=1/255 (--rescale)"}
    run = covidx_cli("predict", *files, "--csv", "--model", unscaled_file, "--rescale", "0.5", cwd=tmp_path)
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    assert [r["preprocessing"] for r in rows] == ["rescale=0.5 (--rescale)"] * 3
    run = covidx_cli("evaluate", str(tmp_path / "data"), "--model", unscaled_file, "--rescale", "1/255", cwd=tmp_path)
    assert run.returncode == 0 and "input scaling: rescale=1/255 (--rescale)" in run.stdout, run.stderr
    for bad in ("0", "1/0", "-2", "x", "1/2/3"):
        assert_usage_error(covidx_cli("predict", files[0], "--rescale", bad, cwd=tmp_path), "--rescale", "1/255")


def test_recorded_scaling_is_shown_and_in_the_html_report(model_file, tmp_path):
    pytest.importorskip("matplotlib")
    data = sample_folder(tmp_path / "data")
    run = covidx_cli("evaluate", data, "--model", model_file, "--report", str(tmp_path / "r.html"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "input scaling: rescale=1/255 (recorded in the model file)" in run.stdout
    assert "input scaling: rescale=1/255 (recorded in the model file)" in (tmp_path / "r.html").read_text("utf-8")


def test_a_one_class_folder_needs_class_names_before_the_forward_pass(tmp_path):
    path = tmp_path / "nameless.safetensors"
    ResNet50(weights=None, classes=2, head=(4,), seed=5, preprocessing={"rescale": 1 / 255}).save(path)
    data = sample_folder(tmp_path / "data", labels=("COVID-19",))
    run = covidx_cli("evaluate", data, "--model", str(path), cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "--class-names COVID-19,CLASS1" in lines[0] and "no class names" in lines[0]
    assert "step" not in run.stdout + run.stderr and "accuracy" not in run.stdout  # no forward pass was run
    run = covidx_cli("evaluate", data, "--model", str(path), "--class-names", "COV19,Normal", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "classes: ['COV19', 'Normal']" in run.stdout and "'COVID-19' -> 'COV19'" in run.stdout
    assert "4 images - accuracy" in run.stdout
    assert_usage_error(covidx_cli("evaluate", data, "--class-names", "A,,B", cwd=tmp_path), "--class-names")


def test_class_columns_are_headed_by_class_names(tmp_path):
    path = tmp_path / "nameless.safetensors"
    ResNet50(weights=None, classes=2, head=(4,), seed=5, preprocessing={"rescale": 1 / 255}).save(path)
    run = covidx_cli("evaluate", sample_folder(tmp_path / "data"), "--model", str(path), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    matrix = run.stdout[run.stdout.index("confusion matrix"):].splitlines()
    assert matrix[1].split() == ["COVID-19", "Normal"]  # the folders, matched to the outputs by position
    assert [line.split()[0] for line in matrix[2:4]] == ["COVID-19", "Normal"]
    files = [p for p, _ in sample_files()[:2]]
    run = covidx_cli("predict", *files, "--csv", "--model", str(path), "--class-names", "COV19,Normal", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    assert list(rows[0])[1:3] == ["COV19", "Normal"] and rows[0]["predicted"] in ("COV19", "Normal")


def test_version_and_help_for_every_option(tmp_path):
    import covidx
    from covidx import __main__ as cli

    run = covidx_cli("--version", cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == "covidx %s" % covidx.__version__
    top = cli.parser()
    parsers = [top] + [p for a in top._actions if a.choices and isinstance(a.choices, dict) for p in a.choices.values()]
    undocumented = [(p.prog, a.dest) for p in parsers for a in p._actions if not a.help]
    assert undocumented == []
    for command in ("evaluate", "predict"):
        text = covidx_cli(command, "--help", cwd=tmp_path).stdout
        for option in ("--model", "--rescale", "--class-names", "--batch-size", "--precision"):
            assert option in text
