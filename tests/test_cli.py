"""The covidx command on bad command lines and bad files: usage errors exit 2 with a one-line
message and no traceback; unreadable files exit 1 with every other file scored. The command runs
in a child process (python -m covidx), as a user runs it."""
import json
import os
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
