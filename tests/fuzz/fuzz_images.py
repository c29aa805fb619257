"""Fuzzing of load_img, the one loader of image files: with the images corpus (PNG, JPEG, BMP,
TIFF, GIF; Pillow decodes by content) and with the dicom corpus (pydicom; covidx's header checks,
bounded inflation of deflated files, grey levels). An image, or an ImageFileError naming the file.

    python tests/fuzz/make_seeds.py images CORPUS      (or: dicom CORPUS)
    python tests/fuzz/fuzz_images.py CORPUS -atheris_runs=20000 -timeout=10 -rss_limit_mb=1536"""
import atheris

with atheris.instrument_imports(include=["covidx"]):
    from covidx import dicom  # noqa: F401
    from covidx.preprocessing.image import ImageFileError, img_to_array, load_img

import harness


def load(path, data):
    img_to_array(load_img(path, target_size=(64, 64)))


if __name__ == "__main__":
    harness.main(harness.target(load, ImageFileError))
