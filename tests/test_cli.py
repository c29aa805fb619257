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


# --- output that any file name can be written to, and cannot forge ----------------------------------


HOSTILE_NAMES = [b"bad\xff.png", b"two\nlines.png", b"=HYPERLINK(1).png", b"+1.png", b"@x.png", b"-x.png",
                 b"tab\tand\x1b[31mred.png"]


def hostile_folder(root):
    """Copies of one X-ray under names that are legal on Linux but hostile to text output."""
    os.makedirs(root)
    source = sample_files()[0][0]
    for name in HOSTILE_NAMES:
        shutil.copy(source, os.path.join(os.fsencode(str(root)), name))
    return root


def strict_utf8_env():
    return dict(os.environ, LC_ALL="C.UTF-8", PYTHONIOENCODING="utf-8:strict")


def test_text_and_csv_output_show_every_name_on_one_line(model_file, tmp_path):
    """Names that are not UTF-8, hold a newline, a tab or a terminal escape, under a strict UTF-8
    stdout: every file gets exactly one row (text) or record (CSV), named printably (it was exit 2
    with nothing printed, and a newline forged a row); JSON keeps the exact names."""
    hostile_folder(tmp_path / "in")
    names = sorted(HOSTILE_NAMES)
    shown = [os.fsdecode(n).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
             .replace("\n", "\\n").replace("\t", "\\t").replace("\x1b", "\\x1b") for n in names]
    run = covidx_cli("predict", "in", "--model", model_file, cwd=tmp_path, env=strict_utf8_env())
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 1 + len(names), run.stdout
    assert sorted(line.split("  ")[0].strip() for line in lines[1:]) == sorted("in/" + s for s in shown)
    assert "\x1b" not in run.stdout
    run = covidx_cli("predict", "in", "--model", model_file, "--csv", cwd=tmp_path, env=strict_utf8_env())
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    assert sorted(r["path"] for r in rows) == sorted("in/" + s for s in shown)
    run = covidx_cli("predict", "in", "--model", model_file, "--json", cwd=tmp_path, env=strict_utf8_env())
    assert sorted(os.fsencode(r["path"]) for r in json.loads(run.stdout)) == [b"in/" + n for n in names]


def test_csv_cells_are_never_spreadsheet_formulas(model_file, tmp_path):
    """Relative names starting with = + @ - (and an error naming one): each such CSV cell starts with
    an apostrophe, so a spreadsheet shows it as text instead of running it."""
    hostile_folder(tmp_path / "in")
    (tmp_path / "in" / "=broken.png").write_bytes(b"not an image")
    files = ["=HYPERLINK(1).png", "+1.png", "@x.png", "-x.png", "=broken.png"]
    run = covidx_cli("predict", "--model", model_file, "--csv", "--", *files, cwd=tmp_path / "in")
    assert run.returncode == 1, run.stderr
    rows = list(csv.reader(io.StringIO(run.stdout)))
    assert [r[0] for r in rows[1:]] == ["'" + f for f in files]
    error = rows[-1][rows[0].index("error")]
    assert error.startswith("'=broken.png: "), error
    formula_like = [c for r in rows for c in r if c[:1] in ("=", "+", "-", "@")]
    assert formula_like == []


def test_gradcam_for_a_250_byte_file_name(model_file, tmp_path):
    """A legal 250-byte input name: its overlay's name is shortened to fit the file system (it failed
    on "File name too long" and both records were lost); every record is kept."""
    long_name = "x" * 246 + ".png"
    for name in (long_name, "short.png"):
        shutil.copy(sample_files()[0][0], tmp_path / name)
    run = covidx_cli("predict", long_name, "short.png", "--model", model_file, "--json", "--gradcam", "cams",
                     cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    records = json.loads(run.stdout)
    assert [r["path"] for r in records] == [long_name, "short.png"]
    for r in records:
        assert os.path.isfile(tmp_path / r["gradcam"]) and len(os.path.basename(r["gradcam"])) <= 255
        assert os.path.basename(r["gradcam"]).endswith(".gradcam.png")
    assert os.path.basename(records[0]["gradcam"]).startswith("x" * 200)


def test_gradcam_that_cannot_be_written_keeps_the_record(model_file, tmp_path):
    """An overlay that cannot be written (a directory already has its name): the file's scores are
    kept, the record says why it has no overlay, the next file gets its overlay, exit 1."""
    for name in ("a.png", "b.png"):
        shutil.copy(sample_files()[0][0], tmp_path / name)
    os.makedirs(tmp_path / "cams" / "a.gradcam.png")
    run = covidx_cli("predict", "a.png", "b.png", "--model", model_file, "--json", "--gradcam", "cams",
                     cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    first, second = json.loads(run.stdout)
    assert first["gradcam"] is None and first["gradcam_error"].startswith("a.png: ") and first["probabilities"]
    assert first["probabilities"] == second["probabilities"] and os.path.isfile(tmp_path / second["gradcam"])
    assert "no Grad-CAM overlay for a.png" in run.stderr


@pytest.mark.parametrize("where", ["a directory", "a missing folder"])
def test_report_destination_is_checked_before_the_work(model_file, tmp_path, where):
    """--report naming a directory, or a file in a folder that does not exist: exit 2 at once, one
    line naming it, nothing scored (it was found only after the forward pass)."""
    pytest.importorskip("matplotlib")
    data = sample_folder(tmp_path / "data")
    target = str(tmp_path) if where == "a directory" else str(tmp_path / "nowhere" / "r.html")
    run = covidx_cli("evaluate", data, "--model", model_file, "--report", target, cwd=tmp_path)
    assert_usage_error(run, target, "directory" if where == "a directory" else "no such folder")
